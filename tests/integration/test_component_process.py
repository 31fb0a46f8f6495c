"""One component process as the operator and `qt run` start it (DESIGN §8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from quantum_trader.contracts.keys import Keys
from tests.conftest import free_port
from tests.factories import send, tick


def component_env(redis_url: str, instance: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "BINANCE_"))}
    env.update(QT_INSTANCE=instance, QT_REDIS_URL=redis_url, QT_POD="features-0",
               QT_HEALTH_PORT=str(free_port()), QT_METRICS_PORT=str(free_port()))
    env.update(extra)
    return env


def start(name: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "quantum_trader.cli", "component", name], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"QT_REDIS_URL": "localhost:6379"}, "QT_REDIS_URL must be a redis:// URL"),
        ({"QT_INSTANCE": "Bad Instance"}, "QT_INSTANCE"),
        ({"QT_HEALTH_PORT": "eighty"}, "QT_HEALTH_PORT='eighty' is not a port number"),
        ({"QT_CONFIG": "/nonexistent/config.yaml"}, "QT_CONFIG=/nonexistent/config.yaml does not exist"),
        ({"QT_EXCHANGE_URL": "sim:8000"}, "QT_EXCHANGE_URL: 'sim:8000' is not an http(s) URL"),
        ({"QT_EXCHANGE_URL": "http://sim:port"}, "QT_EXCHANGE_URL: 'http://sim:port' is not an http(s) URL"),
    ],
)
def test_a_wrong_setting_exits_non_zero_with_one_clear_line(redis_url, instance, overrides, message):
    env = component_env(redis_url, instance)
    env.update(overrides)
    process = start("features", env)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    record = json.loads(lines[0])
    assert record["level"] == "error" and message in record["msg"]


def test_an_unknown_component_is_refused(redis_url, instance):
    process = start("execution-result-reader", component_env(redis_url, instance))
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2 and "is not a component" in output


def test_sigterm_finishes_acks_and_exits_zero(redis_url, instance, tmp_path):
    env = component_env(redis_url, instance)
    process = start("features", env)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys(instance)
    try:
        deadline = time.monotonic() + 30
        while not client.exists(keys.heartbeat("features", "features-0")):
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.1)
        for i in range(200):
            send(client, keys, "market.tick", tick("BTCUSDT", 100 + i, 1000 + i), id=f"BTCUSDT:{1000 + i}")
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert '"msg": "stopped"' in output
    # whatever it took, it finished and acked: nothing is left pending for this consumer
    pending = client.xpending(keys.stream("market.tick"), "features")["pending"]
    assert pending == 0


def test_a_metrics_port_in_use_is_one_error_line_and_exit_1(redis_url, instance):
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        env = component_env(redis_url, instance, QT_METRICS_PORT=str(taken.getsockname()[1]))
        process = start("features", env)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    errors = [json.loads(line) for line in output.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1 and errors[0]["msg"] == "cannot serve health or metrics"
    assert "Traceback" not in output
