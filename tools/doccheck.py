#!/usr/bin/env python3
"""Runs the code examples of Markdown files as written, against the stack tools/with-stack.sh
started (STACK_GRPC, STACK_HTTP, STACK_NATS), so the docs cannot rot.

Per file, in this order:
  - every ```bash block, concatenated into one script (later blocks see earlier variables);
  - each ```python block, in .tools/pyclient with ./clients/python installed (once per run);
  - each ```ts block, as an ES module in a scratch npm project with clients/typescript installed;
  - each ```go block, as `package main` in a scratch GOPATH holding clients/go.
A block whose info string says `norun` (```python norun) is skipped, as are other languages.
The default addresses in the examples (localhost:50051, http://127.0.0.1:8080,
nats://localhost:4222) are pointed at the stack's ports, and target/release/ at the stack's
build profile (PROFILE). Exits 1 on the first failure.

Usage: tools/with-stack.sh python3 tools/doccheck.py README.md docs/api.md docs/clients.md
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)


def stack_env() -> dict[str, str]:
    try:
        return {k: os.environ[k] for k in ("STACK_GRPC", "STACK_HTTP", "STACK_NATS")}
    except KeyError as e:
        sys.exit(f"doccheck: {e.args[0]} is not set; run through tools/with-stack.sh")


def point_at_stack(code: str, env: dict[str, str]) -> str:
    nats = env["STACK_NATS"].removeprefix("nats://")
    for default in ("localhost:50051", "127.0.0.1:50051"):
        code = code.replace(default, env["STACK_GRPC"])
    code = code.replace("http://127.0.0.1:8080", env["STACK_HTTP"])
    for default in ("localhost:4222", "127.0.0.1:4222"):
        code = code.replace(default, nats)
    # `make run` builds release binaries; the stack may run another profile's.
    code = code.replace("target/release/", f"target/{os.environ.get('PROFILE', 'release')}/")
    return code


def run(what: str, cmd: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> None:
    print(f"--- {what}", flush=True)
    env = dict(os.environ, **(extra_env or {}))
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, timeout=180, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except subprocess.TimeoutExpired:
        sys.exit(f"doccheck: {what} timed out")
    print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        sys.exit(f"doccheck: {what} failed (exit {proc.returncode})")


_PYTHON: Path | None = None


def python_with_client() -> Path:
    """The interpreter of .tools/pyclient, with the Python client freshly installed."""
    global _PYTHON
    if _PYTHON is None:
        venv = ROOT / ".tools/pyclient"
        if not (venv / "bin/python").exists():
            run("python3 -m venv .tools/pyclient", [sys.executable, "-m", "venv", str(venv)], ROOT)
        run("pip install ./clients/python", [str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check",
                                               "--upgrade", "./clients/python"], ROOT)
        _PYTHON = venv / "bin/python"
    return _PYTHON


def check(path: Path, env: dict[str, str]) -> int:
    blocks = [(info.split(), body) for info, body in FENCE.findall(path.read_text())]
    runnable = [(words[0], point_at_stack(body, env)) for words, body in blocks if words and "norun" not in words[1:]]
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        bash = [b for lang, b in runnable if lang == "bash"]
        if bash:
            script = tmpdir / "blocks.sh"
            script.write_text("set -euo pipefail\n" + "\n".join(bash))
            run(f"{path}: {len(bash)} bash block(s)", ["bash", str(script)], ROOT)
            count += len(bash)
        for i, (lang, body) in enumerate(runnable):
            if lang == "python":
                python = python_with_client()
                script = tmpdir / f"block{i}.py"
                script.write_text(body)
                run(f"{path}: python block {i}", [str(python), str(script)], tmpdir)
            elif lang == "ts":
                project = tmpdir / "ts"
                if not project.exists():
                    project.mkdir()
                    (project / "package.json").write_text('{"name": "doccheck", "private": true, "type": "module"}\n')
                    run("npm install clients/typescript", ["npm", "install", "--silent", "--no-audit", "--no-fund",
                                                           str(ROOT / "clients/typescript")], project)
                (project / f"block{i}.mjs").write_text(body)
                run(f"{path}: ts block {i}", ["node", f"block{i}.mjs"], project)
            elif lang == "go":
                gopath = tmpdir / "gopath"
                (gopath / "src/dispatch/clients").mkdir(parents=True, exist_ok=True)
                link = gopath / "src/dispatch/clients/go"
                if not link.exists():
                    link.symlink_to(ROOT / "clients/go")
                main = gopath / f"src/doccheck{i}"
                main.mkdir()
                (main / "main.go").write_text(body)
                run(f"{path}: go block {i}", ["go", "run", "."], main,
                    {"GO111MODULE": "off", "GOPATH": f"{gopath}:/usr/share/gocode"})
            else:
                continue
            count += 1
    return count


def main() -> None:
    env = stack_env()
    total = 0
    for name in sys.argv[1:]:
        total += check(ROOT / name, env)
    print(f"doccheck: {total} passed, 0 failed")


if __name__ == "__main__":
    main()
