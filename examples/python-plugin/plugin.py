#!/usr/bin/env python3
"""A resource-manager plugin for the gateway, in Python with the standard library only.

It runs Jupyter kernels as local processes, speaking the gateway's plugin protocol (version 1,
docs/plugin-protocol.md) on stdin and stdout: one JSON object per line, one answer per request,
each answer carrying its request's id. The gateway starts one plugin process per kernel.

    python3 plugin.py [--name NAME] [--runtime-dir DIR] [--misbehave MODE]

--name         the backend name announced in `hello` (default: python-plugin)
--runtime-dir  where connection files and kernel logs go (default: <tmp>/python-plugin)
--misbehave    break the protocol during `launch`, to show what the gateway does about it:
               crash (exit after starting the kernel), garbage (answer with a line that is not
               JSON), wrong-id (answer another request's id), silent (never answer)

Kernels stay in the plugin's process group: a gateway that gives up on the plugin kills that
group, so nothing the plugin started outlives it by accident. They get no JPY_PARENT_PID, so a
kernel outlives a plugin whose stdin closes without `cleanup` (the gateway went away) and a
later plugin process can `reattach` to it from its record.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

PROTOCOL = 1


class Refused(Exception):
    """A request this plugin answers with `ok: false`."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


def log(text):
    """Diagnostics go to stderr; stdout belongs to the protocol."""
    print(f"python-plugin[{os.getpid()}]: {text}", file=sys.stderr, flush=True)


def answer(request_id, **fields):
    sys.stdout.write(json.dumps({"id": request_id, "ok": True, **fields}) + "\n")
    sys.stdout.flush()


def refuse(request_id, kind, message):
    line = {"id": request_id, "ok": False, "error": {"kind": kind, "message": message}}
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def free_ports(count, lo, hi):
    """`count` ports that were free a moment ago, inside lo..hi unless that range is empty."""
    sockets, ports = [], []
    try:
        candidates = iter(range(lo, hi + 1)) if hi > lo else None
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            if candidates is None:
                s.bind(("127.0.0.1", 0))
            else:
                for port in candidates:
                    try:
                        s.bind(("127.0.0.1", port))
                        break
                    except OSError:
                        continue
                else:
                    raise Refused("capacity", f"no {count} free ports in {lo}..{hi}")
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def state_of(returncode):
    if returncode is None:
        return {"state": "running"}
    if returncode < 0:
        return {"state": "exited", "signal": -returncode}
    return {"state": "exited", "exit_code": returncode}


class Kernel:
    """The one kernel of this plugin process: our child, or a re-attached process."""

    def __init__(self, pid, connection_file, log_file, child=None):
        self.pid = pid
        self.connection_file = connection_file
        self.log_file = log_file
        self.child = child

    def state(self):
        if self.child is not None:
            return state_of(self.child.poll())
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return {"state": "exited"}
        except PermissionError:
            return {"state": "unknown"}
        return {"state": "running"}

    def running(self):
        return self.state()["state"] == "running"

    def signal(self, signum):
        if not self.running():
            raise Refused("not_running", f"kernel process {self.pid} is not running")
        os.kill(self.pid, signum)

    def terminate(self, grace):
        if self.running():
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.running():
                os.kill(self.pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while self.running() and time.monotonic() < deadline:
                    time.sleep(0.05)
        return self.state()

    def record(self):
        return {"pid": self.pid, "connection_file": self.connection_file, "log": self.log_file}


class Plugin:
    def __init__(self, args):
        self.name = args.name
        self.runtime_dir = args.runtime_dir
        self.misbehave = args.misbehave
        self.kernel = None

    # --- operations -------------------------------------------------------------------------

    def hello(self, request):
        if request.get("protocol") != PROTOCOL:
            log(f"the gateway offers protocol {request.get('protocol')}; answering with {PROTOCOL}")
        return {
            "protocol": PROTOCOL,
            "name": self.name,
            "class_names": [f"examples.{self.name}"],
            "provisioner_names": [f"{self.name}-provisioner"],
            "capabilities": {"host": "gateway", "run_as": False, "reattach": True},
        }

    def launch(self, request):
        kernel_id = request["kernel_id"]
        spec = request["kernelspec"]
        env = request.get("env") or {}
        os.makedirs(self.runtime_dir, mode=0o700, exist_ok=True)
        connection_file = os.path.join(self.runtime_dir, f"kernel-{kernel_id}.json")
        log_file = os.path.join(self.runtime_dir, f"kernel-{kernel_id}.log")

        previous = request.get("previous")
        if previous:
            connection = dict(previous)
        else:
            port_range = request.get("port_range") or {}
            ports = free_ports(5, port_range.get("lo", 0), port_range.get("hi", 0))
            names = ["shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"]
            connection = dict(zip(names, ports))
            connection.update(
                transport="tcp",
                ip="127.0.0.1",
                key=uuid.uuid4().hex,
                signature_scheme="hmac-sha256",
            )
        connection["kernel_name"] = spec["name"]
        fd = os.open(connection_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(connection, f)

        values = {
            "connection_file": connection_file,
            "resource_dir": spec["resource_dir"],
            "kernel_id": kernel_id,
        }
        argv = []
        for arg in spec["argv"]:
            for key, value in values.items():
                arg = arg.replace("{" + key + "}", value)
            argv.append(arg)
        program = shutil.which(argv[0], path=env.get("PATH") or os.environ.get("PATH"))
        if program is None:
            raise Refused("kernel", f"kernelspec {spec['name']}: {argv[0]} was not found")
        with open(log_file, "ab") as out:
            child = subprocess.Popen(
                [program, *argv[1:]],
                env=env,
                cwd=request.get("cwd") or None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        self.kernel = Kernel(child.pid, connection_file, log_file, child)
        log(f"kernel {kernel_id} started as pid {child.pid}")
        return {"connection": connection, "record": self.kernel.record()}

    def reattach(self, request):
        record = request.get("record") or {}
        pid = record.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            raise Refused("config", "the record has no pid")
        kernel = Kernel(pid, record.get("connection_file"), record.get("log"))
        if not kernel.running():
            raise Refused("not_running", f"kernel process {pid} is gone")
        self.kernel = kernel
        return {}

    def poll(self, _request):
        return self.need_kernel().state()

    def signal(self, request):
        self.need_kernel().signal(int(request["signum"]))
        return {}

    def terminate(self, request):
        return self.need_kernel().terminate(request.get("grace_ms", 5000) / 1000.0)

    def cleanup(self, request):
        kernel = self.kernel
        if kernel is not None and not request.get("keep_files"):
            for path in (kernel.connection_file, kernel.log_file):
                if path:
                    try:
                        os.remove(path)
                    except FileNotFoundError:
                        pass
        return {}

    def need_kernel(self):
        if self.kernel is None:
            raise Refused("not_running", "this plugin process has no kernel")
        return self.kernel

    # --- the loop ---------------------------------------------------------------------------

    def serve(self):
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                request = json.loads(line)
                request_id, op = request["id"], request["op"]
            except (ValueError, KeyError, TypeError):
                log(f"not a request: {line[:200]!r}")
                continue
            handler = {
                "hello": self.hello,
                "launch": self.launch,
                "reattach": self.reattach,
                "poll": self.poll,
                "signal": self.signal,
                "terminate": self.terminate,
                "cleanup": self.cleanup,
            }.get(op)
            if handler is None:
                refuse(request_id, "unsupported", f"unknown operation {op!r}")
                continue
            try:
                fields = handler(request)
            except Refused as err:
                refuse(request_id, err.kind, err.message)
                continue
            except Exception as err:  # noqa: BLE001 - every failure becomes an answer
                refuse(request_id, "failed", f"{op}: {type(err).__name__}: {err}")
                continue
            if op == "launch" and self.misbehave:
                self.break_protocol(request_id)
            answer(request_id, **fields)
        # EOF: the gateway is done with us (after cleanup) or went away; the kernel stays.

    def break_protocol(self, request_id):
        mode = self.misbehave
        log(f"misbehaving on purpose: {mode}")
        if mode == "crash":
            os._exit(3)
        if mode == "garbage":
            sys.stdout.write("this is not JSON at all\n")
            sys.stdout.flush()
        elif mode == "wrong-id":
            answer(request_id + 1000)
        elif mode == "silent":
            while True:
                time.sleep(3600)
        # After a protocol violation the gateway stops listening; wait for it to end us.
        while True:
            time.sleep(3600)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="python-plugin")
    parser.add_argument(
        "--runtime-dir", default=os.path.join(tempfile.gettempdir(), "python-plugin")
    )
    parser.add_argument("--misbehave", choices=["crash", "garbage", "wrong-id", "silent"])
    Plugin(parser.parse_args()).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
