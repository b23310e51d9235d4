"""A Python client of AetherFS from generated stubs: create -> write -> read -> checkpoint ->
diff -> commit, with a bus subscription that sees the session's own events.

Usage: python example.py [ENDPOINT]   (default 127.0.0.1:7600; run generate.sh first)
Set AETHER_TOKEN to send a bearer token.
"""

import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen"))

import grpc  # noqa: E402

from aetherfs.v1 import (  # noqa: E402
    bus_pb2,
    bus_pb2_grpc,
    common_pb2,
    history_pb2,
    history_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
    workspace_pb2,
    workspace_pb2_grpc,
)


def main() -> int:
    endpoint = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7600"
    token = os.environ.get("AETHER_TOKEN")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    channel = grpc.insecure_channel(endpoint)
    sessions = session_pb2_grpc.SessionServiceStub(channel)
    workspace = workspace_pb2_grpc.WorkspaceServiceStub(channel)
    history = history_pb2_grpc.HistoryServiceStub(channel)
    bus = bus_pb2_grpc.BusServiceStub(channel)

    session = sessions.CreateSession(
        session_pb2.CreateSessionRequest(labels={"client": "python"}), metadata=metadata
    ).session
    print(f"created session {session.id}")

    # Subscribe first, from the earliest offset, and collect the session's events.
    events = []
    seen_commit = threading.Event()

    def watch():
        request = bus_pb2.SubscribeRequest(
            session_id=session.id,
            start=bus_pb2.StartPosition(earliest=True),
            subject_filter="session.>",
        )
        for response in bus.Subscribe(request, metadata=metadata, timeout=30):
            if response.HasField("message"):
                events.append(response.message.subject)
                if response.message.subject == "session.commit.created":
                    seen_commit.set()
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def write(path, data):
        header = workspace_pb2.WriteFileRequest(
            header=workspace_pb2.WriteFileHeader(session_id=session.id, path=path)
        )
        chunks = [workspace_pb2.WriteFileRequest(data=data[i : i + 65536]) for i in range(0, len(data), 65536)]
        return workspace.WriteFile(iter([header] + chunks), metadata=metadata)

    def read(path):
        request = workspace_pb2.ReadFileRequest(session_id=session.id, path=path)
        return b"".join(m.data for m in workspace.ReadFile(request, metadata=metadata))

    hello = b"hello from python\n" * 1000
    written = write("notes/hello.txt", hello)
    print(f"wrote notes/hello.txt ({written.entry.size} bytes) at head version {written.head_version}")
    assert read("notes/hello.txt") == hello, "read back differs"

    checkpoint = history.CreateCheckpoint(
        history_pb2.CreateCheckpointRequest(session_id=session.id, name="first"), metadata=metadata
    ).checkpoint
    print(f"checkpoint {checkpoint.name} at version {checkpoint.head_version}")

    write("notes/hello.txt", b"changed\n")
    write("notes/new.txt", b"new file\n")
    diff = workspace.Diff(
        workspace_pb2.DiffRequest(
            session_id=session.id,
            **{"from": common_pb2.Revision(kind=common_pb2.REVISION_KIND_CHECKPOINT, name="first")},
        ),
        metadata=metadata,
    )
    changes = {entry.path: workspace_pb2.DiffKind.Name(entry.kind) for entry in diff.entries}
    print(f"diff against checkpoint: {changes}")
    assert changes == {"notes/hello.txt": "DIFF_KIND_MODIFIED", "notes/new.txt": "DIFF_KIND_ADDED"}, changes

    commit = history.Commit(
        history_pb2.CommitRequest(session_id=session.id, message="from python"), metadata=metadata
    ).commit
    print(f"commit {commit.id[:16]}… by {commit.author}")

    if not seen_commit.wait(timeout=30):
        print(f"no commit event on the bus; saw {events}", file=sys.stderr)
        return 1
    print(f"bus events: {events}")
    assert "session.files.changed" in events and "session.checkpoint.created" in events, events
    print("python client: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
