#!/usr/bin/env python3
"""Publishes one OCSF Detection Finding to cordon's detections topic, as an EDR or SIEM
pipeline would. The four fields cordon requires are device.uid (the host id its agent runs
under), finding_info.uid (unique per detection: cordon ignores repeats), time (epoch ms) and
severity_id; the rest is what your rules match on.

    pip install confluent-kafka
    ops/examples/produce-detection.py --brokers broker-1:9092 --host web-01 --severity 5 \\
        --title "Ransomware encrypting files" --technique T1486

Key the message by host id, as here: one host's detections then stay in order.
"""
import argparse
import json
import sys
import time
import uuid

from confluent_kafka import Producer


def detection(host: str, severity: int, title: str, technique: str | None) -> dict:
    finding = {"uid": str(uuid.uuid4()), "title": title}
    if technique:
        finding["attacks"] = [{"technique": {"uid": technique}}]
    return {
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "activity_id": 1,
        "time": int(time.time() * 1000),
        "severity_id": severity,
        "device": {"uid": host, "hostname": host},
        "finding_info": finding,
        "metadata": {"product": {"name": "produce-detection.py"}, "version": "1.3.0"},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True, help="host:port,... of the Kafka cluster")
    parser.add_argument("--topic", default="edr.detections")
    parser.add_argument("--host", required=True, help="the host id (device.uid)")
    parser.add_argument("--severity", type=int, default=5, help="OCSF severity_id, 0-6")
    parser.add_argument("--title", default="Suspicious activity")
    parser.add_argument("--technique", help="an ATT&CK technique id, e.g. T1486")
    args = parser.parse_args()

    event = detection(args.host, args.severity, args.title, args.technique)
    failures = []
    producer = Producer({"bootstrap.servers": args.brokers, "enable.idempotence": True})
    producer.produce(
        args.topic,
        key=args.host.encode(),
        value=json.dumps(event).encode(),
        on_delivery=lambda error, _message: error and failures.append(error),
    )
    producer.flush(10)
    if failures or len(producer) > 0:
        print(f"not delivered: {failures or 'timed out'}", file=sys.stderr)
        return 1
    print(f"delivered detection {event['finding_info']['uid']} for {args.host} to {args.topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
