"""The seed's client flow with python-socketio (a second-language Socket.IO client).

Usage: python flow.py URL [polling|websocket]. Exits non-zero on the first failed check.
"""

import sys
import threading
import time

import socketio

URL = sys.argv[1]
MODE = sys.argv[2] if len(sys.argv) > 2 else "polling"
TRANSPORTS = ["polling", "websocket"] if MODE == "polling" else ["websocket"]


class Recorder:
    """Records every event a client receives and waits for one."""

    def __init__(self, client):
        self.events = []
        self.cond = threading.Condition()
        client.on("*", self.record)

    def record(self, event, data=None):
        with self.cond:
            self.events.append((event, data))
            self.cond.notify_all()

    def wait_for(self, event, pred=lambda d: True, timeout=5.0):
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for name, data in self.events:
                    if name == event and pred(data):
                        return data
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {event}; got {[e for e, _ in self.events]}")
                self.cond.wait(left)


def connect(user):
    client = socketio.Client(reconnection=False)
    rec = Recorder(client)
    client.connect(URL, auth={"userId": user, "recovery": False}, transports=TRANSPORTS, wait_timeout=10)
    return client, rec


def main():
    alice, alice_rec = connect(f"py-alice-{MODE}")
    bob, bob_rec = connect(f"py-bob-{MODE}")
    connected = alice_rec.wait_for("dialogue:connected")
    assert connected["userId"] == f"py-alice-{MODE}", connected
    alice_rec.wait_for("dialogue:joined", lambda d: d["roomId"] == "general")
    history = alice_rec.wait_for("dialogue:history", lambda d: d["roomId"] == "general")
    assert isinstance(history["events"], list)
    bob_rec.wait_for("dialogue:joined")

    text = f"hello from python over {MODE}"
    ack = bob.call("dialogue:trigger", {"roomId": "general", "event": "message",
                                        "data": {"text": text, "username": "bob"}}, timeout=5)
    assert ack["ok"] is True and ack["seq"] >= 1, ack
    event = alice_rec.wait_for("dialogue:event", lambda d: d["data"]["text"] == text)
    assert event["from"] == f"py-bob-{MODE}" and event["seq"] == ack["seq"], event

    page = alice.call("dialogue:getHistory", {"roomId": "general", "eventName": "message",
                                              "start": 0, "end": 5}, timeout=5)
    assert page["ok"] and page["events"][0]["data"]["text"] == text, page
    older = alice.call("dialogue:getHistory", {"roomId": "general", "eventName": "message",
                                               "before": ack["seq"], "limit": 5}, timeout=5)
    assert all(e["seq"] < ack["seq"] for e in older["events"]), older

    unknown = alice.call("dialogue:join", {"roomId": "no-such-room"}, timeout=5)
    assert unknown == {"ok": False, "code": "ROOM_NOT_FOUND", "message": unknown["message"]}, unknown
    alice_rec.wait_for("dialogue:error", lambda d: d["code"] == "ROOM_NOT_FOUND")
    invalid = alice.call("dialogue:trigger", {"roomId": "general", "event": "message",
                                              "data": {"text": ""}}, timeout=5)
    assert invalid["code"] == "VALIDATION_FAILED" and "/text" in invalid["message"], invalid

    if MODE == "polling":
        deadline = time.time() + 5
        while alice.transport() != "websocket" and time.time() < deadline:
            time.sleep(0.05)
        assert alice.transport() == "websocket", alice.transport()

    left = alice.call("dialogue:leave", {"roomId": "general"}, timeout=5)
    assert left["ok"], left
    alice_rec.wait_for("dialogue:left")
    alice.disconnect()
    bob.disconnect()
    print(f"python-socketio flow over {MODE}: ok")


if __name__ == "__main__":
    main()
