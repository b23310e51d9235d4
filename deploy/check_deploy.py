#!/usr/bin/env python3
"""Checks the deployment files without a Docker engine or a Kubernetes cluster.

    check_deploy.py compose COMPOSE_JSON   # the output of `docker compose config --format json`
    check_deploy.py dockerfile deploy/Dockerfile
    check_deploy.py kubernetes deploy/kubernetes

`docker compose config` has already validated the compose file against the Compose
Specification and resolved anchors, merges and references; this adds what it does not check
(build files exist, the cluster has the shape issue 9 asks for, addresses point at services,
one garbage collector).
Kubernetes manifests are validated against the OpenAPI schemas bundled with the
`kubernetes-validate` package (offline, strict), then cross-checked. Run by scripts/check-deploy.sh.
Every failure is printed; the exit status is 1 if there was any.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from urllib.parse import urlparse

errors: list[str] = []


def fail(where: str, message: str) -> None:
    errors.append(f"{where}: {message}")


# ---- docker-compose.yml ---------------------------------------------------------------------

AETHERD_ROLES = ("coordinator", "store", "bus")


def aetherd_role(service: dict) -> str | None:
    """The aetherd subcommand a service runs, if it runs aetherd."""
    if "build" not in service:
        return None
    command = service.get("command") or []
    return command[0] if command else "dev"


def hosts_of(service_name: str, service: dict) -> set[str]:
    names = {service_name}
    for net in (service.get("networks") or {}).values():
        names.update((net or {}).get("aliases") or [])
    return names


def check_compose(path: str, root: str) -> None:
    with open(path) as f:
        project = json.load(f)
    services: dict = project.get("services", {})
    where = "docker-compose.yml"
    known_hosts: set[str] = set()
    for name, svc in services.items():
        known_hosts |= hosts_of(name, svc)

    def check_url(svc_name: str, key: str, url: str) -> None:
        host = urlparse(url).hostname
        if not host or host not in known_hosts:
            fail(where, f"{svc_name}: {key}={url} names no service or alias of this file")

    roles: Counter = Counter()
    advertised: Counter = Counter()
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = build.get("context", ".")
            context = context if os.path.isabs(context) else os.path.join(root, context)
            dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
            if not os.path.isdir(context):
                fail(where, f"{name}: build context {context} does not exist")
            if not os.path.isfile(dockerfile):
                fail(where, f"{name}: Dockerfile {dockerfile} does not exist")
            if not os.path.relpath(dockerfile, root).startswith("deploy" + os.sep):
                fail(where, f"{name}: images must be built from deploy/ Dockerfiles")
        env = svc.get("environment") or {}
        role = aetherd_role(svc)
        if role is not None:
            roles[role] += 1
            # `aetherd gc` serves no port, so there is nothing for a healthcheck to ask.
            if role == "gc":
                if svc.get("ports"):
                    fail(where, f"{name}: aetherd gc serves no port; publish none")
            elif "healthcheck" not in svc:
                fail(where, f"{name}: an aetherd service needs a healthcheck")
            otlp = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            if not otlp:
                fail(where, f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT is not set")
            else:
                check_url(name, "OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
            if role == "gc":
                endpoints = env.get("AETHER_ETCD_ENDPOINTS", "")
                if not endpoints:
                    fail(where, f"{name}: AETHER_ETCD_ENDPOINTS is not set")
                for url in filter(None, endpoints.split(",")):
                    check_url(name, "AETHER_ETCD_ENDPOINTS", url)
            if role in ("coordinator", "bus"):
                addr = env.get("AETHER_ADVERTISE_ADDR")
                if not addr:
                    fail(where, f"{name}: AETHER_ADVERTISE_ADDR is not set")
                else:
                    advertised[addr] += 1
                    check_url(name, "AETHER_ADVERTISE_ADDR", addr)
                    if urlparse(addr).hostname != name:
                        fail(where, f"{name}: advertises {addr}, not its own name")
                endpoints = env.get("AETHER_ETCD_ENDPOINTS", "")
                if not endpoints:
                    fail(where, f"{name}: AETHER_ETCD_ENDPOINTS is not set")
                for url in filter(None, endpoints.split(",")):
                    check_url(name, "AETHER_ETCD_ENDPOINTS", url)
            if role == "coordinator":
                for key in ("AETHER_STORE_ENDPOINT", "AETHER_BUS_ENDPOINT"):
                    if not env.get(key):
                        fail(where, f"{name}: {key} is not set")
                    else:
                        check_url(name, key, env[key])
            if role in ("store", "bus", "gc"):
                if env.get("AETHER_STORE_BACKEND") != "s3":
                    fail(where, f"{name}: AETHER_STORE_BACKEND must be s3 in a cluster")
                check_url(name, "AETHER_S3_ENDPOINT", env.get("AETHER_S3_ENDPOINT", ""))
    for addr, n in advertised.items():
        if n > 1:
            fail(where, f"{n} services advertise {addr}")
    for role in AETHERD_ROLES:
        if roles[role] < 2:
            fail(where, f"{roles[role]} {role} service(s); the cluster runs at least 2")
    if roles["gc"] != 1:
        fail(where, f"{roles['gc']} gc service(s); the cluster runs one garbage collector")

    # etcd: a real cluster, every member a service of this file.
    etcd = {n: s for n, s in services.items() if "etcd" in str(s.get("image", ""))}
    if len(etcd) < 3:
        fail(where, f"{len(etcd)} etcd service(s); the cluster runs 3")
    for name, svc in etcd.items():
        env = svc.get("environment") or {}
        members = dict(
            m.split("=", 1) for m in env.get("ETCD_INITIAL_CLUSTER", "").split(",") if "=" in m
        )
        if set(members) != set(etcd):
            fail(where, f"{name}: ETCD_INITIAL_CLUSTER {sorted(members)} != {sorted(etcd)}")
        if env.get("ETCD_NAME") != name:
            fail(where, f"{name}: ETCD_NAME is {env.get('ETCD_NAME')!r}")
        if "healthcheck" not in svc:
            fail(where, f"{name}: etcd needs a healthcheck (the services wait for it)")

    if not any("moto" in str(s.get("image", "")) or "minio" in str(s.get("image", ""))
               for s in services.values()):
        fail(where, "no S3-compatible store service")
    if not any("jaeger" in str(s.get("image", "")) or "otel" in str(s.get("image", ""))
               for s in services.values()):
        fail(where, "no OTLP collector / trace UI service")

    published: Counter = Counter()
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            if port.get("published"):
                published[(port.get("host_ip", ""), str(port["published"]))] += 1
        image = str(svc.get("image", ""))
        if "build" not in svc and (":" not in image or image.endswith(":latest")):
            fail(where, f"{name}: pin the image version ({image!r})")
    for (ip, port), n in published.items():
        if n > 1:
            fail(where, f"host port {ip}:{port} is published {n} times")


# ---- deploy/Dockerfile ------------------------------------------------------------------------

def check_dockerfile(path: str) -> None:
    import dockerfile  # the official BuildKit parser, from PyPI

    try:
        commands = dockerfile.parse_file(path)
    except dockerfile.GoParseError as e:
        fail(path, f"does not parse: {e}")
        return
    stages: list[dict] = []
    for c in commands:
        if c.cmd == "FROM":
            alias = c.value[2].lower() if len(c.value) >= 3 and c.value[1].upper() == "AS" else None
            stages.append({"base": c.value[0], "alias": alias, "user": None, "copies": []})
        elif stages and c.cmd == "USER":
            stages[-1]["user"] = c.value[0]
        elif stages and c.cmd == "COPY":
            stages[-1]["copies"] += [f.split("=", 1)[1] for f in c.flags if f.startswith("--from=")]
    if len(stages) < 2:
        fail(path, "must be multi-stage (build, then a small runtime stage)")
        return
    names = {s["alias"] for s in stages if s["alias"]}
    for s in stages:
        for source in s["copies"]:
            if source.lower() not in names:
                fail(path, f"COPY --from={source} names no stage")
    final = stages[-1]
    if not re.search(r"(-slim|distroless|alpine|scratch)", final["base"]):
        fail(path, f"runtime stage base {final['base']} is not a small image")
    user = (final["user"] or "").split(":")[0]
    if not user.isdigit() or int(user) == 0:
        fail(path, f"runtime stage must run as a numeric non-root USER (is {final['user']!r})")
    if not open(path).readline().startswith("# syntax=docker/dockerfile:1"):
        fail(path, "first line must be '# syntax=docker/dockerfile:1' (RUN --mount needs it)")


# ---- deploy/kubernetes --------------------------------------------------------------------

K8S_VERSIONS = ("1.28.0", None)  # oldest supported here (gRPC probes are GA from 1.27), newest


def check_pod(where: str, pod: dict, by_kind: dict, directory: str, probes: bool) -> None:
    """Security context, resources, references and (for servers) gRPC probes of a pod spec."""
    psc = pod.get("securityContext") or {}
    if not psc.get("runAsNonRoot") or not psc.get("runAsUser"):
        fail(where, "pod securityContext must set runAsNonRoot and a non-zero runAsUser")
    for c in pod["containers"]:
        cw = f"{where} container {c['name']}"
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(part) or {}):
                    fail(cw, f"resources.{part}.{r} is missing")
        csc = c.get("securityContext") or {}
        if csc.get("allowPrivilegeEscalation") is not False:
            fail(cw, "allowPrivilegeEscalation must be false")
        ports = {p["containerPort"] for p in c.get("ports", [])} | {
            p.get("name") for p in c.get("ports", [])
        }
        for probe in ("startupProbe", "readinessProbe", "livenessProbe") if probes else ():
            grpc = (c.get(probe) or {}).get("grpc")
            if not grpc:
                fail(cw, f"{probe} must be a gRPC probe (grpc.health.v1)")
            elif grpc["port"] not in ports:
                fail(cw, f"{probe} port {grpc['port']} is not a container port")
        for source in c.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                ref = (source.get(key) or {}).get("name")
                if ref and ref not in by_kind.get(kind, {}):
                    fail(cw, f"envFrom {kind} {ref} is not defined in {directory}")
        env_names = [e["name"] for e in c.get("env", [])]
        for e in c.get("env", []):
            for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                if ref not in env_names[: env_names.index(e["name"])]:
                    fail(cw, f"env {e['name']} uses $({ref}) before it is defined")


def check_kubernetes(directory: str) -> None:
    import kubernetes_validate
    import yaml

    kustomization_path = os.path.join(directory, "kustomization.yaml")
    with open(kustomization_path) as f:
        kustomization = yaml.safe_load(f)
    resources = kustomization.get("resources") or []
    on_disk = sorted(
        f for f in os.listdir(directory)
        if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"
    )
    for f in on_disk:
        if f not in resources:
            fail(kustomization_path, f"{f} is not listed in resources")
    for f in resources:
        if not os.path.isfile(os.path.join(directory, f)):
            fail(kustomization_path, f"resource {f} does not exist")

    versions = [v or kubernetes_validate.latest_version() for v in K8S_VERSIONS]
    objects: list[tuple[str, dict]] = []
    for f in resources:
        path = os.path.join(directory, f)
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as fh:
                docs = [d for d in yaml.safe_load_all(fh) if d is not None]
        except yaml.YAMLError as e:
            fail(path, f"is not YAML: {e}")
            continue
        for doc in docs:
            name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    where = "/".join(str(p) for p in e.path)
                    fail(f"{path} {name}", f"Kubernetes {version}: {where}: {e.message}")
                except Exception as e:  # unknown kind or version: still a failure
                    fail(f"{path} {name}", f"Kubernetes {version}: {e}")
            objects.append((path, doc))

    namespaces = {d["metadata"]["name"] for _, d in objects if d.get("kind") == "Namespace"}
    by_kind: dict[str, dict[str, tuple[str, dict]]] = {}
    for path, d in objects:
        meta = d.get("metadata") or {}
        if d.get("kind") != "Namespace" and meta.get("namespace") not in namespaces:
            fail(path, f"{d.get('kind')}/{meta.get('name')}: namespace "
                       f"{meta.get('namespace')!r} is not one of {sorted(namespaces)}")
        by_kind.setdefault(d.get("kind"), {})[meta.get("name")] = (path, d)

    deployments = by_kind.get("Deployment", {})
    components = set()
    for name, (path, d) in deployments.items():
        where = f"{path} Deployment/{name}"
        spec = d["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"].get("labels", {})
        selector = spec["selector"].get("matchLabels", {})
        if any(labels.get(k) != v for k, v in selector.items()):
            fail(where, "selector does not match the pod template's labels")
        if spec.get("replicas", 1) < 2:
            fail(where, "runs fewer than 2 replicas")
        args = pod["containers"][0].get("args") or []
        components.add(args[0] if args else None)
        check_pod(where, pod, by_kind, directory, probes=True)
    for role in AETHERD_ROLES:
        if role not in components:
            fail(directory, f"no Deployment runs `aetherd {role}`")

    # Garbage collection: `aetherd gc --once` on a schedule, never two collections at once.
    collectors = []
    for name, (path, job) in by_kind.get("CronJob", {}).items():
        where = f"{path} CronJob/{name}"
        spec = job["spec"]
        pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        args = pod["containers"][0].get("args") or []
        if args[:1] == ["gc"]:
            collectors.append(name)
            if "--once" not in args:
                fail(where, "a scheduled `aetherd gc` must run with --once (one collection, then exit)")
            if spec.get("concurrencyPolicy") != "Forbid":
                fail(where, "concurrencyPolicy must be Forbid: one collection at a time")
        check_pod(where, pod, by_kind, directory, probes=False)
    if len(collectors) != 1:
        fail(directory, f"{len(collectors)} CronJob(s) run `aetherd gc`; the cluster needs one")

    for name, (path, svc) in by_kind.get("Service", {}).items():
        selector = svc["spec"].get("selector") or {}
        matched = [
            d for _, d in deployments.values()
            if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                   for k, v in selector.items())
        ]
        if not matched:
            fail(f"{path} Service/{name}", f"selector {selector} matches no Deployment")
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort", port["port"])
            for d in matched:
                cports = [p for c in d["spec"]["template"]["spec"]["containers"]
                          for p in c.get("ports", [])]
                if target not in [p["containerPort"] for p in cports] + [p.get("name") for p in cports]:
                    fail(f"{path} Service/{name}", f"targetPort {target} is no container port "
                                                   f"of Deployment/{d['metadata']['name']}")

    config = by_kind.get("ConfigMap", {}).get("aetherfs-config")
    if config:
        data = config[1].get("data") or {}
        for key in data:
            if not (key.startswith("AETHER_") or key.startswith("OTEL_")):
                fail(config[0], f"ConfigMap key {key} is no aetherd setting")
        services = set(by_kind.get("Service", {}))
        for key in ("AETHER_STORE_ENDPOINT", "AETHER_BUS_ENDPOINT"):
            host = urlparse(data.get(key, "")).hostname or ""
            if host.split(".")[0] not in services:
                fail(config[0], f"{key}={data.get(key)!r} is not one of the Services {sorted(services)}")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("compose", "dockerfile", "kubernetes"):
        print(__doc__, file=sys.stderr)
        return 2
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    {"compose": lambda p: check_compose(p, root),
     "dockerfile": check_dockerfile,
     "kubernetes": check_kubernetes}[argv[1]](argv[2])
    for e in errors:
        print(f"check-deploy: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
