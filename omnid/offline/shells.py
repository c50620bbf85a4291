"""Shell integration: the hook code ``omnid init SHELL`` prints, and the three things it asks
of omnid (bind a session to the shell, note a new working directory, end the session)."""

from __future__ import annotations

import os
import shlex
import sys

SHELLS = ("bash", "zsh", "fish")
SESSION_TYPE = "shell"
CWD = "cwd"
"""The ``detail`` of the file_access events that record a shell's working directory."""


def omnid_command() -> str:
    """How the hook code calls this omnid again: the absolute path of the script that runs
    now, else this interpreter with ``-m omnid``; so it works whatever PATH holds later."""
    script = sys.argv[0]
    if os.path.basename(script) == "omnid" and os.path.isfile(script) and os.access(script, os.X_OK):
        return shlex.quote(os.path.abspath(script))
    return f"{shlex.quote(sys.executable)} -m omnid"


def init_script(shell: str, command: str | None = None) -> str:
    return SCRIPTS[shell].replace("@OMNID@", command or omnid_command())


def start(shell: str, pid: int | None = None) -> str:
    """The id of the live session of the shell ``pid`` (default: our parent), created with
    the shell's name, tty, host and user; a new one records its first directory."""
    from omnid_client import Client
    from omnid_client.protocol import ContextEvent

    with Client(client_name="omnid-shell", start_timeout=3.0) as client:
        got = client.get_or_create(
            shell,
            pid=pid if pid is not None else os.getppid(),
            session_type=SESSION_TYPE,
            metadata=_metadata(shell),
            owner_must_be_ancestor=True,
        )
        session = got.session
        if got.status == "created":
            client.append_context(
                session.session_id, [ContextEvent("file_access", session.workspace or os.getcwd(), detail=CWD)]
            )
    return session.session_id


def record_cwd(session_id: str, directory: str) -> None:
    from omnid_client import Client
    from omnid_client.protocol import ContextEvent

    with Client(client_name="omnid-shell", autostart=False, timeout=1.0, connect_timeout=0.5) as client:
        client.append_context(session_id, [ContextEvent("file_access", directory, detail=CWD)])


def end(session_id: str) -> None:
    from omnid_client import Client

    with Client(client_name="omnid-shell", autostart=False, timeout=1.0, connect_timeout=0.5) as client:
        client.end(session_id)


def _metadata(shell: str) -> dict[str, str]:
    import pwd
    import socket

    metadata = {"shell": shell, "host": socket.gethostname()}
    try:
        metadata["user"] = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        metadata["user"] = str(os.getuid())
    for fd in (0, 2, 1):
        try:
            metadata["tty"] = os.ttyname(fd)
            break
        except OSError:
            continue
    return metadata


# The session is bound once per shell process ($$ changes in a new shell, not in a subshell
# or when the rc file is sourced again). A directory change is sent when it happens, in the
# foreground: sent in the background, quick changes arrived out of order or after the end.
# A prompt in the same directory costs a string comparison.

BASH = r"""# omnid shell integration for bash: eval "$(omnid init bash)" in ~/.bashrc
if [[ $- == *i* && "${__omnid_pid:-}" != "$$" ]]; then
  __omnid_pid=$$
  if OMNID_SESSION_ID="$(@OMNID@ shell start bash --pid $$ 2>/dev/null)" && [[ -n "$OMNID_SESSION_ID" ]]; then
    export OMNID_SESSION_ID
  else
    unset OMNID_SESSION_ID
  fi
  __omnid_pwd="$PWD"
  __omnid_prompt() {
    local status=$?
    if [[ -n "${OMNID_SESSION_ID:-}" && "$PWD" != "$__omnid_pwd" ]]; then
      __omnid_pwd="$PWD"
      @OMNID@ shell cd "$OMNID_SESSION_ID" "$PWD" >/dev/null 2>&1
    fi
    return $status
  }
  __omnid_exit() {
    [[ -n "${OMNID_SESSION_ID:-}" ]] && @OMNID@ shell end "$OMNID_SESSION_ID" >/dev/null 2>&1
    eval "${__omnid_prev_exit:-}"
  }
  if [[ ";${PROMPT_COMMAND[*]:-};" != *";__omnid_prompt;"* ]]; then
    if [[ "$(declare -p PROMPT_COMMAND 2>&1)" == "declare -a"* ]]; then
      PROMPT_COMMAND=(__omnid_prompt "${PROMPT_COMMAND[@]}")
    else
      PROMPT_COMMAND="__omnid_prompt${PROMPT_COMMAND:+;$PROMPT_COMMAND}"
    fi
  fi
  __omnid_trap() { eval "set -- $(trap -p EXIT)"; [[ "${3:-}" == *__omnid_exit* ]] || __omnid_prev_exit="${3:-}"; }
  __omnid_trap
  trap __omnid_exit EXIT
fi
"""

ZSH = r"""# omnid shell integration for zsh: eval "$(omnid init zsh)" in ~/.zshrc
if [[ -o interactive && "${__omnid_pid:-}" != "$$" ]]; then
  typeset -g __omnid_pid=$$
  if OMNID_SESSION_ID="$(@OMNID@ shell start zsh --pid $$ 2>/dev/null)" && [[ -n "$OMNID_SESSION_ID" ]]; then
    export OMNID_SESSION_ID
  else
    unset OMNID_SESSION_ID
  fi
  typeset -g __omnid_pwd="$PWD"
  __omnid_chpwd() {
    if [[ -n "${OMNID_SESSION_ID:-}" && "$PWD" != "$__omnid_pwd" ]]; then
      __omnid_pwd="$PWD"
      @OMNID@ shell cd "$OMNID_SESSION_ID" "$PWD" >/dev/null 2>&1
    fi
  }
  __omnid_exit() {
    [[ -n "${OMNID_SESSION_ID:-}" ]] && @OMNID@ shell end "$OMNID_SESSION_ID" >/dev/null 2>&1
  }
  autoload -Uz add-zsh-hook
  add-zsh-hook chpwd __omnid_chpwd
  add-zsh-hook zshexit __omnid_exit
fi
"""

FISH = r"""# omnid shell integration for fish: omnid init fish | source  (in ~/.config/fish/config.fish)
if status is-interactive; and test "$__omnid_pid" != "$fish_pid"
    set -g __omnid_pid $fish_pid
    set -l __omnid_sid (@OMNID@ shell start fish --pid $fish_pid 2>/dev/null)
    if test -n "$__omnid_sid"
        set -gx OMNID_SESSION_ID $__omnid_sid
    else
        set -e OMNID_SESSION_ID
    end
    set -g __omnid_pwd $PWD
    function __omnid_chpwd --on-variable PWD
        if set -q OMNID_SESSION_ID; and test "$PWD" != "$__omnid_pwd"
            set -g __omnid_pwd $PWD
            @OMNID@ shell cd $OMNID_SESSION_ID $PWD >/dev/null 2>&1
        end
    end
    function __omnid_exit --on-event fish_exit
        set -q OMNID_SESSION_ID; and @OMNID@ shell end $OMNID_SESSION_ID >/dev/null 2>&1
    end
end
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH, "fish": FISH}
