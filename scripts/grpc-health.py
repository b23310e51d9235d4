#!/usr/bin/env python3
"""Asks a gRPC server for its health (grpc.health.v1) or, with --list, its services (reflection).

    grpc-health.py 127.0.0.1:7600                                  # overall health ("")
    grpc-health.py 127.0.0.1:7600 aetherfs.v1.SessionService       # one service
    grpc-health.py 127.0.0.1:7600 aetherfs.v1.SessionService --wait 30
    grpc-health.py 127.0.0.1:7600 --list                           # services, by reflection

Prints the status and exits 0 when it is SERVING (with --list: when reflection answers), 1
otherwise. --wait SECS retries until SERVING or the time is up. Runs with the Python of
.tools/venv (grpcio, grpcio-health-checking, grpcio-reflection: scripts/install-deps.sh).
"""

import argparse
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(channel: grpc.Channel, service: str, timeout: float) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError as e:
        return f"{e.code().name}: {e.details()}"


def list_services(channel: grpc.Channel, timeout: float) -> list[str]:
    """Lists services through grpc.reflection.v1 (what tonic serves), falling back to v1alpha.
    grpcio-reflection ships only v1alpha messages; v1 is the same protocol under a new name."""
    from grpc_reflection.v1alpha import reflection_pb2

    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
        call = channel.stream_stream(
            f"/{package}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        try:
            for reply in call(iter([request]), timeout=timeout):
                return sorted(s.name for s in reply.list_services_response.service)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED or package.endswith("v1alpha"):
                raise
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address", help="host:port")
    parser.add_argument("service", nargs="?", default="", help='service name ("" = the server)')
    parser.add_argument("--wait", type=float, default=0, help="retry for up to SECS seconds")
    parser.add_argument("--timeout", type=float, default=2, help="deadline of one call")
    parser.add_argument("--list", action="store_true", help="list services by reflection")
    args = parser.parse_args()

    with grpc.insecure_channel(args.address) as channel:
        if args.list:
            try:
                print("\n".join(list_services(channel, args.timeout)))
                return 0
            except grpc.RpcError as e:
                print(f"{e.code().name}: {e.details()}", file=sys.stderr)
                return 1
        deadline = time.monotonic() + args.wait
        while True:
            status = check(channel, args.service, args.timeout)
            if status == "SERVING" or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    print(f"{args.address} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
