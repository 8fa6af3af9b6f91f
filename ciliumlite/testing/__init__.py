"""Test helpers shared by ciliumlite's own suite and its users' suites (a pytest plugin).

Enable with ``pytest -p ciliumlite.testing.plugin`` (installed packages register it automatically).
Fixtures: ``netns``, ``veth_pair``, ``cgroup``, ``bpffs_dir``, ``datapath_objects``
(:mod:`ciliumlite.testing.datapath`), ``leak_check``; markers ``requires_root`` and
``requires_feature(name)``. :mod:`ciliumlite.testing.packets` builds and parses test frames.
"""

from ciliumlite.testing.resources import Snapshot, VethPair, unique_name

__all__ = ["Snapshot", "VethPair", "unique_name"]
