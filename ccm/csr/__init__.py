"""Approval of kubelet-serving CertificateSigningRequests against the cloud (opt-in: ``--csr-approval``).

``request`` reads a CSR (and its PKCS#10 request), ``decide`` says approve / leave pending / deny in pure code,
``apply`` is the one place that writes an approval, ``controller`` drives it from a watch.
"""
