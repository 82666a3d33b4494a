"""A simulated host's sshd policy and the login environment a session starts with.

What a real OpenSSH server on a stock Ubuntu/Debian host (DGX OS is Ubuntu) does, and
what a first contact with such a host trips over:

- `AcceptEnv LANG LC_*` (Debian's and Ubuntu's shipped sshd_config). Environment
  variables the client sends under any other name are dropped without a word
  (openssh-portable session.c session_env_req: "Ignoring env request %s: disallowed
  name", logged at debug2 only), so `HF_TOKEN` does not arrive unless the operator adds
  `AcceptEnv HF_TOKEN`.
- `MaxSessions 10` (servconf.h DEFAULT_SESSIONS_MAX): the 11th concurrent session on
  one connection is refused at channel open (session.c session_new returns NULL;
  serverloop.c server_input_channel_open answers SSH2_MSG_CHANNEL_OPEN_FAILURE with
  reason SSH2_OPEN_CONNECT_FAILED and the text "open failed" -- OpenSSH >= 7.5; older
  servers said ADMINISTRATIVELY_PROHIBITED). The connection itself stays up.
- The PATH of a non-interactive command: sshd's default path, then pam_env's
  /etc/environment on Ubuntu. Neither has ~/.local/bin, where `pip install --user`,
  pipx and `uv tool` put `hf` (Ubuntu's ~/.profile adds it for login shells only, and
  ~/.bashrc returns at once when not interactive). So `hf` is "not found" unless the
  policy says it is on the PATH; `python3 -m huggingface_hub.cli.hf` still works when
  the package is installed for the user (huggingface_hub cli/hf.py has a __main__).
- The SSH user may not be in the `docker` group, and docker may lack NVIDIA's runtime.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_ACCEPT_ENV = ("LANG", "LC_*")
DEFAULT_MAX_SESSIONS = 10
# Ubuntu's /etc/environment (read by pam_env for every SSH session); no ~/.local/bin.
LOGIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/games:/usr/local/games:/snap/bin"  # noqa: E501


@dataclass
class SshdPolicy:
    """The sshd_config and host setup facts a simulated host answers by (settable)."""

    accept_env: list[str] = field(default_factory=lambda: list(DEFAULT_ACCEPT_ENV))
    max_sessions: int = DEFAULT_MAX_SESSIONS
    hf_on_path: bool = False  # `hf` found by a non-interactive shell
    hub_module: bool = True  # `python3 -m huggingface_hub.cli.hf` works for the user
    docker_group: bool = True  # the SSH user may use /var/run/docker.sock
    nvidia_runtime: bool = True  # `nvidia` listed in `docker info` Runtimes

    FIELDS = (
        "accept_env",
        "max_sessions",
        "hf_on_path",
        "hub_module",
        "docker_group",
        "nvidia_runtime",
    )

    def accepts(self, name: str) -> bool:
        """OpenSSH's match_pattern: `*` and `?` wildcards, whole name, case-sensitive."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.accept_env)

    def update(self, **values: Any) -> None:
        """Change some fields; unknown names and wrong types raise (TypeError/ValueError)."""
        for name, value in values.items():
            if name not in self.FIELDS:
                raise TypeError(f"unknown sshd policy field: {name}")
            if name == "accept_env":
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError("accept_env must be a list of names or patterns")
                value = list(value)
            elif name == "max_sessions":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError("max_sessions must be a non-negative integer")
            elif not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false")
            setattr(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def login_env(user: str, home: str) -> dict[str, str]:
    """What sshd sets before the client's accepted variables (session.c do_setup_env)."""
    return {
        "USER": user,
        "LOGNAME": user,
        "HOME": home,
        "SHELL": "/bin/bash",
        "PATH": LOGIN_PATH,
        "MAIL": f"/var/mail/{user}",
    }


def session_env(
    policy: SshdPolicy, user: str, home: str, sent: dict[str, str]
) -> tuple[dict[str, str], list[str], list[str]]:
    """The session's environment, and the names of the client's variables kept / dropped."""
    env = login_env(user, home)
    kept, dropped = [], []
    for name, value in sent.items():
        if policy.accepts(name):
            env[name] = value
            kept.append(name)
        else:
            dropped.append(name)
    return env, sorted(kept), sorted(dropped)
