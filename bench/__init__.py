"""End-to-end benchmark of the CloudSigma CCM as it runs in production.

``.venv/bin/python -m bench --nodes 100,1000,5000`` starts, for every N, a fresh real kube-apiserver, the
CloudSigma emulator as a subprocess (25 ms per request by default) seeded with N servers, and the built
daemon (``.venv/bin/cloudsigma-ccm``) as a subprocess; registers N Nodes with the uninitialized taint in a
burst and measures taint removal, CloudSigma calls, Kubernetes writes, CPU and memory. The same burst runs
against the daemon in reference mode (``--server-lookup=per-node --concurrent-node-syncs=1``, upstream's
call pattern) for N up to ``--reference-max-nodes``. Results: ``bench/results/<date>.json`` (and
``latest.json``), ``docs/benchmarks.md`` and ``docs/benchmark-taint-removal.png``.
"""
