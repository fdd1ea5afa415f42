"""One turbine's certificate against the local fleet's cloud side (benchmarks/device_attack.py), and the rule
engine's throughput.

- cloud_takeover_messages_lost: honest turbines' messages the broker acknowledged but the cloud never got,
  after the attacker connected with the cloud's client id and with another turbine's.
- foreign_alert_changes: changes to other turbines' alerts after the attacker published on their topics,
  closed their episode ids, claimed their turbine id and pre-claimed their next episode id.
- other_turbines_lost_during_flood: other turbines' messages lost while the attacker floods at FLOOD_RATE
  messages/s for FLOOD_S s (the flood's achieved rate is printed as attacker_flood_msgs_per_s), and
  other_turbines_delay_p99_ms, from a message's publish to its row on the bus.
- rule_engine_msgs_per_s: messages from TURBINES unthrottled clients through the engine onto the bus (rows
  committed; the functions downstream not running), quota off.

Run alone: `.venv/bin/python -m benchmarks.bench_attack`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from awscrt import mqtt5

from benchmarks.device_attack import attack, connect, rig
from nacelle.local.edge.broker import Broker
from nacelle.local.edge.pki import LocalPki
from nacelle.local.runtime.rules import RuleEngine
from nacelle.local.runtime.stack import Stack
from nacelle.local.runtime.template import load_template, topic_rules

FLOOD_S, FLOOD_RATE = 30.0, 1200.0
HONEST = ["turbine-02", "turbine-03", "turbine-04", "turbine-05"]
TURBINES, MESSAGES_EACH = 4, 5000


def engine_throughput(home: Path) -> float:
    stack = Stack(home)
    broker = Broker(home, LocalPki(home / "pki")).start()
    engine = RuleEngine(topic_rules(load_template()), stack.bus.put_many, broker.endpoint, broker.pki.cloud(),
                        quota_per_s=1e9, quota_burst=1e9).start()
    clients = [connect(broker, f"turbine-{i:02d}", unthrottled=True) for i in range(1, TURBINES + 1)]
    try:
        started = time.monotonic()
        futures = []
        for seq in range(1, MESSAGES_EACH + 1):
            for i, client in enumerate(clients, start=1):
                thing = f"turbine-{i:02d}"
                payload = json.dumps({"v": 1, "turbine_id": thing, "seq": seq}).encode()
                futures.append(client.publish(mqtt5.PublishPacket(topic=f"turbines/{thing}/health", payload=payload,
                                                                  qos=mqtt5.QoS.AT_LEAST_ONCE)))
        for f in futures:
            f.result(60)
        total = TURBINES * MESSAGES_EACH
        while engine.matched < total and time.monotonic() - started < 120:
            time.sleep(0.005)
        return engine.matched / (time.monotonic() - started)
    finally:
        for c in clients:
            c.stop()
        engine.stop()
        broker.stop()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="nacelle-attack-") as tmp:
        with rig(Path(tmp) / "attack", HONEST) as r:
            found = attack(r, FLOOD_S, FLOOD_RATE)
        print(f"cloud_takeover_messages_lost={found.takeover_lost}", flush=True)
        print(f"foreign_alert_changes={found.foreign_alert_changes}", flush=True)
        print(f"foreign_topics_refused={len(found.refused_topics)}", flush=True)
        print(f"attacker_flood_msgs_per_s={found.flood_msgs_per_s:.0f}", flush=True)
        print(f"attacker_flood_seconds={FLOOD_S:.0f}", flush=True)
        print(f"other_turbines_lost_during_flood={found.other_lost_during_flood}", flush=True)
        print(f"other_turbines_delay_p99_ms={found.other_delay_p99_s * 1000:.0f}", flush=True)
        print(f"attacker_messages_refused={json.dumps(found.refused_by_reason, sort_keys=True)}", flush=True)
        print(f"rule_engine_msgs_per_s={engine_throughput(Path(tmp) / 'throughput'):.0f}", flush=True)
    ok = (found.takeover_lost == 0 and found.foreign_alert_changes == 0 and found.other_lost_during_flood == 0
          and len(found.refused_topics) == 2 * len(HONEST))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
