"""What the launchers of the test servers share: a child process stopped by its PID."""

import os
import signal
import subprocess


class ServerProcess:
    """Base of FakeStripe and LocalStripe: `self.proc` is the server's Popen."""

    proc: subprocess.Popen

    def stop(self, timeout=5.0):
        """Stop the server by its PID: SIGTERM, then SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
