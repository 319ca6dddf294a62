"""Shared pytest configuration: the real parts (kube-apiserver, Keycloak) and the CloudSigma emulator."""

pytest_plugins = [
    "tests.realenv.kube_fixtures",
    "tests.realenv.keycloak_fixtures",
    "tests.emulator.fixtures",
]
