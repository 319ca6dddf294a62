"""The tenant runtime: one tenant cluster's controllers, built and run on the process's shared services.

- :mod:`ccm.tenant.services` — what a process shares between its tenants (:class:`~ccm.tenant.services.Services`);
- :mod:`ccm.tenant.controllers` — one tenant's controllers: :func:`~ccm.tenant.controllers.build_tenant`,
  :func:`~ccm.tenant.controllers.run_controllers`.

Both process shapes (:mod:`ccm.single.process`, :mod:`ccm.fleet`) run tenants on it; it imports neither.
"""
