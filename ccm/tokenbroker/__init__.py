"""The token broker: the cluster owner's impersonated, verified CloudSigma token, kept in Secrets of the tenant
cluster for its own CloudSigma clients (the CSI driver first; opt-in with ``--token-broker``).

- :mod:`ccm.tokenbroker.secret`: what a target Secret holds (keys, label, annotations) and how to read it back;
- :mod:`ccm.tokenbroker.decide`: pure — from the current Secret, the token (or why there is none) and the time,
  what the Secret should become;
- :mod:`ccm.tokenbroker.apply`: the one place that writes it (create, or update with the resourceVersion read);
- :mod:`ccm.tokenbroker.controller`: timing — asks the shared credential chain at its refresh margin, re-checks the
  targets, records Events, metrics and the status ``doctor`` and ``/debug/credentials`` show;
- :mod:`ccm.tokenbroker.wiring`: built from the settings for one tenant (single-tenant mode and each fleet tenant).
"""
