"""Fixtures: a real strata-server process per test module, on 127.0.0.1 with
ports of the kernel's choosing and its files in a temporary directory.

The binary is ``$STRATA_SERVER_BIN`` (scripts/test.sh builds it), else
``target/debug/strata-server`` of the repository."""

import os
import pathlib
import subprocess
import threading

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


class Server:
    """A strata-server process; its log is ``dir/server.log``."""

    def __init__(self, tmp: pathlib.Path, *args: str):
        binary = os.environ.get("STRATA_SERVER_BIN", str(ROOT / "target" / "debug" / "strata-server"))
        if not os.path.exists(binary):
            raise RuntimeError(f"no strata-server at {binary}: build it (cargo build --bin strata-server)")
        self.dir = tmp
        self.log = open(tmp / "server.log", "ab")
        env = dict(os.environ, RUST_LOG=os.environ.get("STRATA_TEST_SERVER_LOG", "warn"))
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
             "--data-listen", "127.0.0.1:0", "--data-dir", str(tmp), *args],
            stdout=subprocess.PIPE, stderr=self.log, env=env,
        )
        for raw in self.proc.stdout:
            line = raw.decode()
            if line.startswith("strata-server listening: grpc "):
                rest = line[len("strata-server listening: grpc "):]
                self.addr = rest.split()[0]
                break
        else:
            self.proc.wait()
            raise RuntimeError(f"strata-server exited before listening ({self.proc.returncode}); "
                               f"log: {(tmp / 'server.log').read_text()}")
        # Later output goes on to the log.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for raw in self.proc.stdout:
            self.log.write(raw)
            self.log.flush()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("strata"), "--dram-capacity", "64MiB", "--nvme-capacity", "256MiB")
    yield s
    s.stop()
