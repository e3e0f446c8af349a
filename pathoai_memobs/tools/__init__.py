"""Tooling around the library: the command line, the demo workload, the local Prometheus and
Alertmanager stack, the cgroup sandbox, and the shipped assets. The core modules of
``pathoai_memobs`` import none of it."""
