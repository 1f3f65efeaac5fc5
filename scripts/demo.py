"""Write records into a stream and read them back, for trying Millrace by hand (until the ingest API and CLI).

    ~/.millrace/venv/bin/python scripts/demo.py send raw_data 100     # {"id": "demo-<i>", "value": i}, keyed by id
    ~/.millrace/venv/bin/python scripts/demo.py peek final_stream -n 5
"""
import argparse
import json
import os
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

BROKERS = os.environ.get("MILLRACE_KAFKA_BROKERS", "127.0.0.1:9092")


def send(topic: str, count: int) -> None:
    failures = []
    p = Producer({"bootstrap.servers": BROKERS, "message.timeout.ms": 10000})
    for i in range(count):
        record = {"id": f"demo-{i}", "value": i}
        p.produce(topic, key=record["id"], value=json.dumps(record), on_delivery=lambda e, _: e and failures.append(e))
    left = p.flush(15)
    if left or failures:
        sys.exit(f"{left + len(failures)} of {count} records were not acknowledged: {failures[:1] or 'timed out'}")
    print(f"sent {count} records to {topic}")


def peek(topic: str, n: int) -> None:
    c = Consumer({"bootstrap.servers": BROKERS, "group.id": f"demo-peek-{time.time()}", "enable.auto.commit": False})
    meta = c.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None:
        sys.exit(f"no topic {topic} on {BROKERS}")
    c.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    shown, idle = 0, 0
    while shown < n and idle < 10:
        msgs = c.consume(n - shown, 0.3)
        idle = 0 if msgs else idle + 1
        for m in msgs:
            if m.error():
                raise KafkaException(m.error())
            print(m.value().decode(errors="replace"))
            shown += 1
    c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send", help="write records {id, value}")
    s.add_argument("topic")
    s.add_argument("count", type=int, nargs="?", default=10)
    k = sub.add_parser("peek", help="print records from the beginning")
    k.add_argument("topic")
    k.add_argument("-n", type=int, default=10)
    a = ap.parse_args()
    send(a.topic, a.count) if a.cmd == "send" else peek(a.topic, a.n)


if __name__ == "__main__":
    main()
