"""Bad configuration: the installed ``cloudsigma-ccm`` exits 2 and prints ONE line naming the setting and the fix.

Every case starts from a valid password-only configuration and breaks one thing. The subprocesses of all cases
run concurrently once per module (a Python start-up each); each case is then its own test.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.reliability import registry
from tests.reliability.support import ccm_binary, clean_env

pytestmark = pytest.mark.integration
PASSWORD = "config-test-password-31337"
CLIENT_SECRET = "config-test-client-secret-4242"
IMPERSONATION = {"CLOUDSIGMA_IMPERSONATION_ENABLED": "true", "CLOUDSIGMA_OAUTH_URL": "http://127.0.0.1:9/realms/x",
                 "CLOUDSIGMA_CLIENT_ID": "cloudsigma-ccm", "CLOUDSIGMA_CLIENT_SECRET": CLIENT_SECRET,
                 "CLOUDSIGMA_USER_EMAIL": "alice@example.com"}


@dataclass(frozen=True)
class Bad:
    id: str
    what: str
    env: dict[str, str | None] = field(default_factory=dict)  # None: remove from the valid base
    args: tuple[str, ...] = ()
    setting: str = ""  # the env var the line must name
    fix: tuple[str, ...] = ()  # words of the line that say what to do
    files: dict[str, str] = field(default_factory=dict)  # env var -> content of a file it is set to
    hidden: tuple[str, ...] = ()  # values the line must not repeat (besides the configured secrets)


KUBECONFIG_TOKEN = "kubeconfig-bearer-token-8f3a9c2e71"
EXEC_KUBECONFIG = """apiVersion: v1
kind: Config
current-context: tenant
clusters: [{name: tenant, cluster: {server: "https://127.0.0.1:9"}}]
contexts: [{name: tenant, context: {cluster: tenant, user: ccm}}]
users:
- name: ccm
  user:
    exec: {apiVersion: client.authentication.k8s.io/v1, command: aws, args: [eks, get-token]}
"""
BROKEN_KUBECONFIG = f"""apiVersion: v1
kind: Config
users:
- name: ccm
  user:
    token: {KUBECONFIG_TOKEN}: {KUBECONFIG_TOKEN}
"""


CASES = [
    Bad("impersonation-no-email", "impersonation on without user email",
        {**IMPERSONATION, "CLOUDSIGMA_USER_EMAIL": None}, setting="CLOUDSIGMA_USER_EMAIL",
        fix=("required", "email")),
    Bad("impersonation-no-oauth-url", "impersonation on without OAuth URL",
        {**IMPERSONATION, "CLOUDSIGMA_OAUTH_URL": None}, setting="CLOUDSIGMA_OAUTH_URL", fix=("required",)),
    Bad("impersonation-no-client-secret", "impersonation on without client secret",
        {**IMPERSONATION, "CLOUDSIGMA_CLIENT_SECRET": None}, setting="CLOUDSIGMA_CLIENT_SECRET",
        fix=("required", "CLOUDSIGMA_CLIENT_SECRET_FILE")),
    Bad("user-email-not-email", "user email that is no email address",
        {**IMPERSONATION, "CLOUDSIGMA_USER_EMAIL": "alice"}, setting="CLOUDSIGMA_USER_EMAIL",
        fix=("not an email",)),
    Bad("api-url-ftp", "API URL with a non-http scheme", {"CLOUDSIGMA_API_URL": "ftp://zrh.cloudsigma.com/api/2.0/"},
        setting="CLOUDSIGMA_API_URL", fix=("http(s) URL",)),
    Bad("api-url-no-host", "API URL without a host", {"CLOUDSIGMA_IMPERSONATION_API_URL": "https:///api/2.0/"},
        setting="CLOUDSIGMA_IMPERSONATION_API_URL", fix=("http(s) URL",)),
    Bad("oauth-url-no-scheme", "OAuth URL without a scheme",
        {**IMPERSONATION, "CLOUDSIGMA_OAUTH_URL": "keycloak.example.com/realms/cloudsigma"},
        setting="CLOUDSIGMA_OAUTH_URL", fix=("http(s) URL",)),
    Bad("unknown-strategy", "unknown impersonation strategy",
        {**IMPERSONATION, "CLOUDSIGMA_IMPERSONATION_STRATEGY": "magic-link"},
        setting="CLOUDSIGMA_IMPERSONATION_STRATEGY", fix=("keycloak-token-exchange", "cloudsigma-service-provider")),
    Bad("kubeconfig-missing", "kubeconfig that does not exist",
        {"CLOUDSIGMA_KUBECONFIG": "/nonexistent/tenant.kubeconfig"}, setting="CLOUDSIGMA_KUBECONFIG",
        fix=("not a readable file",)),
    Bad("kubeconfig-directory", "kubeconfig that is a directory", {"CLOUDSIGMA_KUBECONFIG": "/"},
        setting="CLOUDSIGMA_KUBECONFIG", fix=("not a readable file",)),
    Bad("kubeconfig-env-missing", "KUBECONFIG pointing nowhere", {"CLOUDSIGMA_KUBECONFIG": None,
                                                                  "KUBECONFIG": "/nonexistent/kubeconfig"},
        setting="CLOUDSIGMA_KUBECONFIG", fix=("not a readable file",)),
    Bad("negative-http-timeout", "negative duration (env)", {"CLOUDSIGMA_HTTP_TIMEOUT": "-5s"},
        setting="CLOUDSIGMA_HTTP_TIMEOUT", fix=("negative", ">= 0")),
    Bad("negative-monitor-period-flag", "negative duration (flag)", args=("--node-monitor-period=-1s",),
        setting="CLOUDSIGMA_NODE_MONITOR_PERIOD", fix=("negative", ">= 0")),
    Bad("negative-number-duration", "negative number of seconds", {"CLOUDSIGMA_SHUTDOWN_TIMEOUT": "-1"},
        setting="CLOUDSIGMA_SHUTDOWN_TIMEOUT", fix=("negative",)),
    Bad("zero-http-timeout", "zero timeout", {"CLOUDSIGMA_HTTP_TIMEOUT": "0s"}, setting="CLOUDSIGMA_HTTP_TIMEOUT",
        fix=("greater than zero",)),
    Bad("not-a-duration", "duration that is no duration", {"CLOUDSIGMA_WATCH_TIMEOUT": "5 parsecs"},
        setting="CLOUDSIGMA_WATCH_TIMEOUT", fix=("30s", "5m")),
    Bad("unknown-provider-comma", "unknown credential provider (comma-separated, as documented)",
        {"CLOUDSIGMA_CREDENTIAL_CHAIN": "password,vault"}, setting="CLOUDSIGMA_CREDENTIAL_CHAIN",
        fix=("item 2", "known providers"), hidden=("vault",)),
    Bad("unknown-provider-json", "unknown credential provider (JSON list)",
        {"CLOUDSIGMA_CREDENTIAL_CHAIN": '["password", "vault"]'}, setting="CLOUDSIGMA_CREDENTIAL_CHAIN",
        fix=("item 2", "known providers"), hidden=("vault",)),
    Bad("provider-listed-twice", "credential provider listed twice",
        {"CLOUDSIGMA_CREDENTIAL_CHAIN": '["password", "password"]'}, setting="CLOUDSIGMA_CREDENTIAL_CHAIN",
        fix=("twice",)),
    Bad("username-without-password", "username without password", {"CLOUDSIGMA_PASSWORD": None},
        setting="CLOUDSIGMA_PASSWORD", fix=("together",)),
    Bad("password-file-unreadable", "password file that cannot be read",
        {"CLOUDSIGMA_PASSWORD": None, "CLOUDSIGMA_PASSWORD_FILE": "/nonexistent/password"},
        setting="CLOUDSIGMA_PASSWORD_FILE", fix=("cannot read",)),
    Bad("no-credentials", "no credentials at all", {"CLOUDSIGMA_USERNAME": None, "CLOUDSIGMA_PASSWORD": None},
        setting="CLOUDSIGMA_IMPERSONATION_ENABLED", fix=("CLOUDSIGMA_USERNAME", "oauth-url")),
    Bad("region-missing", "no region", {"CLOUDSIGMA_REGION": None}, setting="CLOUDSIGMA_REGION",
        fix=("required", "zrh")),
    Bad("region-invalid", "region that is no location id", {"CLOUDSIGMA_REGION": "Zurich 1"},
        setting="CLOUDSIGMA_REGION", fix=("location id",)),
    Bad("negative-page-size", "negative page size", {"CLOUDSIGMA_API_PAGE_SIZE": "-1"},
        setting="CLOUDSIGMA_API_PAGE_SIZE", fix=("greater than or equal to 0",)),
    Bad("zero-workers", "zero node workers", {"CLOUDSIGMA_CONCURRENT_NODE_SYNCS": "0"},
        setting="CLOUDSIGMA_CONCURRENT_NODE_SYNCS", fix=("greater than or equal to 1",)),
    Bad("bad-log-level", "unknown log level", {"CLOUDSIGMA_LOG_LEVEL": "verbose"}, setting="CLOUDSIGMA_LOG_LEVEL",
        fix=("'debug'", "'error'")),
    Bad("bad-boolean", "boolean that is no boolean", {"CLOUDSIGMA_NODE_DELETION_ENABLED": "perhaps"},
        setting="CLOUDSIGMA_NODE_DELETION_ENABLED", fix=("boolean",)),
    Bad("renew-deadline-too-long", "leader-election renew deadline not shorter than the lease",
        {"CLOUDSIGMA_LEADER_ELECT": "true", "CLOUDSIGMA_LEADER_ELECT_RENEW_DEADLINE": "20s"},
        setting="CLOUDSIGMA_LEADER_ELECT_RENEW_DEADLINE", fix=("shorter than",)),
    Bad("nan-duration", "duration `nan` (busy-looped the lifecycle)", {"CLOUDSIGMA_NODE_MONITOR_PERIOD": "nan"},
        setting="CLOUDSIGMA_NODE_MONITOR_PERIOD", fix=("not a finite duration",)),
    Bad("inf-duration", "duration `inf` (crashed with a traceback)", {"CLOUDSIGMA_NODE_STATUS_UPDATE_FREQUENCY": "inf"},
        setting="CLOUDSIGMA_NODE_STATUS_UPDATE_FREQUENCY", fix=("not a finite duration",)),
    Bad("overflowing-duration", "duration that overflows to infinity", {"CLOUDSIGMA_WATCH_TIMEOUT": "1e400"},
        setting="CLOUDSIGMA_WATCH_TIMEOUT", fix=("not a finite duration",)),
    Bad("negative-nan-flag", "duration `-nan` as a flag", args=("--http-timeout=-nan",),
        setting="CLOUDSIGMA_HTTP_TIMEOUT", fix=("not a finite duration",)),
    Bad("password-as-username", "the password put in CLOUDSIGMA_USERNAME", {"CLOUDSIGMA_USERNAME": PASSWORD},
        setting="CLOUDSIGMA_USERNAME", fix=("not an email address",)),
    Bad("secret-in-url", "a URL with credentials that is no http(s) URL",
        {"CLOUDSIGMA_API_URL": f"ftp://user:{PASSWORD}@zrh.cloudsigma.com/"}, setting="CLOUDSIGMA_API_URL",
        fix=("http(s) URL",)),
    Bad("shutdown-longer-than-grace", "shutdown timeout that does not fit the grace period",
        {"CLOUDSIGMA_SHUTDOWN_TIMEOUT": "28s"}, setting="CLOUDSIGMA_SHUTDOWN_TIMEOUT",
        fix=("grace period", "CLOUDSIGMA_TERMINATION_GRACE_PERIOD")),
    Bad("kubeconfig-not-yaml", "kubeconfig that is not YAML (a token on the broken line)",
        files={"CLOUDSIGMA_KUBECONFIG": BROKEN_KUBECONFIG}, setting="CLOUDSIGMA_KUBECONFIG",
        fix=("not valid YAML", "line 6"), hidden=(KUBECONFIG_TOKEN,)),
    Bad("kubeconfig-no-context", "kubeconfig without a current context",
        files={"CLOUDSIGMA_KUBECONFIG": "apiVersion: v1\nkind: Config\n"}, setting="CLOUDSIGMA_KUBECONFIG",
        fix=("current-context",)),
    Bad("kubeconfig-exec", "kubeconfig whose user authenticates with an exec plugin",
        files={"CLOUDSIGMA_KUBECONFIG": EXEC_KUBECONFIG}, setting="CLOUDSIGMA_KUBECONFIG",
        fix=("exec plugin", "not supported", "client certificate")),
    Bad("kubeconfig-binary", "kubeconfig that is not text", files={"CLOUDSIGMA_KUBECONFIG": "\udcff\udcfe"},
        setting="CLOUDSIGMA_KUBECONFIG", fix=("not text",)),
    Bad("management-kubeconfig-not-yaml", "management kubeconfig that is not YAML",
        {"CLOUDSIGMA_LEADER_ELECT": "true"}, files={"CLOUDSIGMA_LEADER_ELECT_KUBECONFIG": BROKEN_KUBECONFIG},
        setting="CLOUDSIGMA_LEADER_ELECT_KUBECONFIG", fix=("not valid YAML",), hidden=(KUBECONFIG_TOKEN,)),
]


@dataclass(frozen=True)
class Result:
    code: int | None
    stdout: str
    stderr: str
    seconds: float


def base_env(kubeconfig: Path) -> dict[str, str]:
    return clean_env(CLOUDSIGMA_REGION="zrh", CLOUDSIGMA_USERNAME="alice@example.com",
                     CLOUDSIGMA_PASSWORD=PASSWORD, CLOUDSIGMA_KUBECONFIG=str(kubeconfig),
                     CLOUDSIGMA_LEADER_ELECT="false", CLOUDSIGMA_LOG_FORMAT="json")


async def run_case(case: Bad, kubeconfig: Path, limit: asyncio.Semaphore) -> Result:
    env = base_env(kubeconfig)
    for key, value in case.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    for key, content in case.files.items():
        path = kubeconfig.parent / f"{case.id}-{key.lower()}"
        path.write_bytes(content.encode(errors="surrogateescape"))
        env[key] = str(path)
    async with limit:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            ccm_binary(), "--metrics-bind-address=", *case.args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:  # it started instead of refusing the configuration
            proc.kill()
            out, err = await proc.communicate()
        return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
                      time.monotonic() - started)


@pytest.fixture(scope="module")
async def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    kubeconfig = tmp_path_factory.mktemp("config") / "tenant.kubeconfig"
    # Usable (nothing listens on port 9): the cases that fail after the settings get as far as opening it.
    kubeconfig.write_text("apiVersion: v1\nkind: Config\ncurrent-context: t\n"
                          "clusters: [{name: t, cluster: {server: 'https://127.0.0.1:9'}}]\n"
                          "contexts: [{name: t, context: {cluster: t, user: u}}]\n"
                          "users: [{name: u, user: {token: base-kubeconfig-token}}]\n")
    for secret, kind in ((PASSWORD, "configured password (config cases)"),
                         (CLIENT_SECRET, "configured client secret (config cases)"),
                         (KUBECONFIG_TOKEN, "token in a malformed kubeconfig (config cases)")):
        registry.add_secret(secret, kind)
    limit = asyncio.Semaphore(4)
    done = await asyncio.gather(*(run_case(c, kubeconfig, limit) for c in CASES))
    out = dict(zip((c.id for c in CASES), done, strict=True))
    for case_id, result in out.items():
        registry.add_text(f"output of cloudsigma-ccm ({case_id})", result.stdout + result.stderr)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_configuration_is_refused_in_one_line(case: Bad, results: dict[str, Result]) -> None:
    injected = ", ".join(f"`{k}={'(unset)' if v is None else v}`" for k, v in case.env.items()
                         if k not in IMPERSONATION or v != IMPERSONATION[k])
    if "CLOUDSIGMA_IMPERSONATION_ENABLED" in case.env:
        injected = "impersonation on, " + injected
    injected = ", ".join(filter(None, [injected, *(f"`{a}`" for a in case.args)]))
    registry.record("input/config", case.what, injected=injected,
                    verified=f"exit 2; exactly one line on stderr, nothing on stdout, no traceback; names "
                             f"`{case.setting}` and says {' / '.join(repr(w) for w in case.fix)}",
                    bad_inputs=1)
    result = results[case.id]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    shown = (result.stdout + result.stderr)[-2000:]
    assert result.code == 2, f"exit code {result.code} (expected 2):\n{shown}"
    assert "Traceback" not in result.stderr, shown
    assert not result.stdout.strip(), f"stdout: {result.stdout!r}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{shown}"
    line = lines[0]
    assert line.startswith("configuration error:"), line
    assert case.setting in line, f"the line does not name {case.setting}: {line}"
    for word in case.fix:
        assert word in line, f"the line does not say {word!r}: {line}"
    assert PASSWORD not in line and CLIENT_SECRET not in line
    for value in case.hidden:
        assert value not in line, f"the line repeats a value it rejected: {line}"
