"""The datapath layer: records of csrc/include, config to .rodata, the loader. Knows Cilium, not the high level."""
