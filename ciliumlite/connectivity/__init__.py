"""Connectivity test: ``cilium connectivity test``'s datapath scenarios, run against a lab.

A :class:`ConnectivityTest` deploys Cilium's test workloads into a lab cluster (a fresh one, or a
lab you pass in) and runs the registered :class:`Scenario` s against them:

* ``client`` and ``client2`` on the first node, ``echo-same`` next to them and ``echo-other`` on the
  second node, each echo pod serving TCP and UDP on port 8080;
* services ``echo-same-node`` / ``echo-other-node`` (type NodePort, TCP and UDP, one backend each)
  and ``echo-other-node-local`` (NodePort, externalTrafficPolicy=Local);
* the lab's outside host (203.0.113.10, "the world") behind the leaf router, running an echo
  server too.

Every scenario returns a :class:`ScenarioResult` with the evidence it saw (who answered, which
address the server saw as the client, datapath counters). A scenario the lab's configuration does
not cover (DSR in SNAT mode) is *skipped* with the reason; a scenario whose feature the datapath
lacks or breaks *fails* -- nothing is skipped silently.

The modules, each importing only those listed after it: ``runner`` (:class:`ConnectivityTest`),
``scenarios`` (the traffic scenarios), ``policies`` (the ``policy/*`` scenarios), ``disruption`` (the ``no-interrupted-connections`` family:
node churn, agent restart, program replacement, under counted traffic), ``drops``
(``no-unexpected-packet-drops``), ``context`` (:class:`ConnectivityContext`, :class:`Probe`),
``framework`` (:class:`Scenario`, :class:`Checks`, :class:`ScenarioResult`, :func:`select`);
``report`` (JSON, JUnit) and ``features`` (:func:`datapath_features`) stand apart.

>>> with ConnectivityTest(routing="vxlan") as ct:            # doctest: +SKIP
...     results = ct.run("pod-to-pod*")
...     print(all(r.ok for r in results))
"""

from ciliumlite.connectivity.context import ConnectivityContext, Probe, with_context
from ciliumlite.connectivity.features import datapath_features
from ciliumlite.connectivity.framework import SCENARIOS, Checks, Scenario, ScenarioResult, scenario, select
from ciliumlite.connectivity.report import results_to_json, summary, write_junit
from ciliumlite.connectivity.runner import ConnectivityTest

__all__ = [
    "SCENARIOS",
    "Checks",
    "ConnectivityContext",
    "ConnectivityTest",
    "Probe",
    "Scenario",
    "ScenarioResult",
    "datapath_features",
    "results_to_json",
    "scenario",
    "select",
    "summary",
    "with_context",
    "write_junit",
]
