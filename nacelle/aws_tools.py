"""Developer-side AWS tooling behind `nacelle aws ...` and `make deploy` (see docs/aws.md).

* `resolve_images`: the SageMaker PyTorch training image for a region, through the SageMaker Python SDK 3.x
  (an optional extra: `pip install -e '.[aws-tools]'`); resolved offline from the SDK's bundled tables.
* `write_parameter_overrides`: put KEY=VALUE entries into samconfig.toml's `[default.deploy.parameters]`
  `parameter_overrides`, editing the text in place so comments and every other entry stay as they were.
* `stack_outputs` and `upload_if_changed`: after `sam deploy`, find the data bucket and upload the training
  code archive to artifacts/ only when its content changed (the bucket is versioned).

Nothing here runs at import time or needs AWS credentials except the two boto3 helpers.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import ConfigurationError

INSTALL_HINT = "pip install -e '.[aws-tools]'"
DEFAULT_SAMCONFIG = Path("samconfig.toml")
DEFAULT_STACK_NAME = "nacelle"
DEFAULT_INSTANCE_TYPE = "ml.m5.xlarge"
SOURCE_KEY = "artifacts/sourcedir.tar.gz"  # template.yaml: NACELLE_TRAINING_SOURCE_KEY
BUCKET_OUTPUT = "DataBucketName"
SHA256_METADATA = "sha256"
SAMCONFIG_TABLE = ("default", "deploy", "parameters")
OVERRIDES_KEY = "parameter_overrides"
# template.yaml's AllowedPattern for TrainingImageUri.
IMAGE_URI = re.compile(r"^(?P<account>[0-9]{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/\S+$")
_PARAMETER_NAME = re.compile(r"^[A-Za-z0-9]+$")  # CloudFormation parameter names are alphanumeric
_SAFE_VALUE = re.compile(r"^[^\s\"'\\]+$")  # one SAM override token, no quoting needed


# -- images ------------------------------------------------------------------------------------------
def resolve_images(region: str, version: str = "2.5", py_version: str = "py311",
                   instance_type: str = DEFAULT_INSTANCE_TYPE) -> dict[str, str]:
    """{"TrainingImageUri": ..., "ProcessingImageUri": ...}: the SageMaker PyTorch training image for `region`.

    The compile step (`python -m training_jobs.compile`, a Processing job) runs in the same image, so both
    keys name the same URI. A CPU instance type gives the CPU image.
    """
    try:
        from sagemaker.core import image_uris
    except ImportError as exc:
        raise ConfigurationError(f"resolving SageMaker image URIs needs the SageMaker Python SDK 3.x: "
                                 f"{INSTALL_HINT} ({exc})") from exc
    try:
        uri = str(image_uris.retrieve("pytorch", region, version=version, py_version=py_version,
                                      instance_type=instance_type, image_scope="training"))
    except (ValueError, KeyError) as exc:
        raise ConfigurationError(f"no SageMaker PyTorch {version} {py_version} training image for region "
                                 f"{region!r} and {instance_type}: {exc}") from exc
    match = IMAGE_URI.match(uri)
    if match is None:
        raise ConfigurationError(f"the SDK returned {uri!r}, which is not an ECR image URI")
    if match["region"] != region:
        raise ConfigurationError(f"the SDK returned an image in {match['region']}, not {region}: {uri}")
    return {"TrainingImageUri": uri, "ProcessingImageUri": uri}


def image_region(uri: str) -> str:
    match = IMAGE_URI.match(uri)
    if match is None:
        raise ConfigurationError(f"{uri!r} is not an ECR image URI")
    return match["region"]


# -- samconfig.toml ----------------------------------------------------------------------------------
def _split_entries(value: Any, where: str) -> list[str]:
    """parameter_overrides as a list of KEY=VALUE tokens (SAM takes a list or one space-separated string)."""
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigurationError(f"{where}: {OVERRIDES_KEY} must be a string or a list of strings")


def _entry_key(entry: str) -> str:
    return entry.partition("=")[0].strip()


def _table(doc: dict[str, Any]) -> dict[str, Any] | None:
    node: Any = doc
    for part in SAMCONFIG_TABLE:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def read_parameter_overrides(samconfig: Path) -> dict[str, str]:
    """KEY -> VALUE of `[default.deploy.parameters] parameter_overrides` (the last one wins)."""
    doc = _load_toml(samconfig.read_text(encoding="utf-8"), samconfig)
    table = _table(doc) or {}
    out: dict[str, str] = {}
    for entry in _split_entries(table.get(OVERRIDES_KEY, []), str(samconfig)):
        key, _, value = entry.partition("=")
        out[key.strip()] = value.strip().strip('"')
    return out


def samconfig_stack_name(samconfig: Path) -> str | None:
    if not samconfig.is_file():
        return None
    doc = _load_toml(samconfig.read_text(encoding="utf-8"), samconfig)
    for command in ("deploy", "global"):
        params = doc.get("default", {}).get(command, {}).get("parameters", {})
        if isinstance(params, dict) and isinstance(params.get("stack_name"), str):
            return str(params["stack_name"])
    return None


def _load_toml(text: str, where: Path | str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{where}: not valid TOML: {exc}") from exc


def _updated_entries(entries: list[str], overrides: Mapping[str, str]) -> list[str]:
    out, seen = [], set()
    for entry in entries:
        key = _entry_key(entry)
        if key in overrides:
            out.append(f"{key}={overrides[key]}")
            seen.add(key)
        else:
            out.append(entry)
    return out + [f"{key}={value}" for key, value in overrides.items() if key not in seen]


@dataclass(frozen=True)
class _Token:
    start: int
    end: int
    value: str


@dataclass(frozen=True)
class _Value:
    start: int
    end: int
    is_array: bool
    elements: list[_Token]
    trailing_comma: bool  # a comma follows the last element


def _string_end(text: str, i: int) -> int:
    """End (exclusive) of the TOML string literal starting at text[i]."""
    for quote in ('"""', "'''"):
        if text.startswith(quote, i):
            j = i + 3
            while j < len(text):
                if quote == '"""' and text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(quote, j):
                    j += 3
                    while j < len(text) and text[j] == quote[0]:  # up to two quotes may end the content
                        j += 1
                    return j
                j += 1
            break
    else:
        quote = text[i]
        j = i + 1
        while j < len(text) and text[j] != "\n":
            if quote == '"' and text[j] == "\\":
                j += 2
                continue
            if text[j] == quote:
                return j + 1
            j += 1
    raise ConfigurationError(f"unterminated string at offset {i}")


def _string_value(token: str) -> Any:
    return tomllib.loads(f"v = {token}")["v"]


def _scan_value(text: str, i: int) -> _Value:
    """Locate the TOML value starting at text[i]: a string, or an array with its top-level string elements."""
    if i < len(text) and text[i] in "\"'":
        end = _string_end(text, i)
        return _Value(i, end, False, [_Token(i, end, str(_string_value(text[i:end])))], False)
    if i >= len(text) or text[i] != "[":
        raise ConfigurationError(f"{OVERRIDES_KEY} must be a string or an array")
    stack = ["["]
    elements: list[_Token] = []
    trailing_comma = False
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "#":
            newline = text.find("\n", j)
            j = len(text) if newline < 0 else newline
            continue
        if c in "\"'":
            end = _string_end(text, j)
            if stack == ["["]:
                value = _string_value(text[j:end])
                elements.append(_Token(j, end, value if isinstance(value, str) else str(value)))
                trailing_comma = False
            j = end
            continue
        if c in "[{":
            stack.append(c)
        elif c in "]}":
            stack.pop()
            if not stack:
                return _Value(i, j + 1, True, elements, trailing_comma)
        elif c == "," and stack == ["["]:
            trailing_comma = True
        j += 1
    raise ConfigurationError(f"unterminated {OVERRIDES_KEY} array")


_HEADER = re.compile(r"(?m)^[ \t]*\[[^\n]*$")
_KEY_LINE = re.compile(r"(?m)^[ \t]*(?:parameter_overrides|\"parameter_overrides\"|'parameter_overrides')[ \t]*=[ \t]*")


def _headers(text: str) -> list[tuple[int, int, Any]]:
    """(line start, line end, parsed header) of every table header line."""
    out = []
    for m in _HEADER.finditer(text):
        try:
            parsed = tomllib.loads(m.group(0).strip())
        except tomllib.TOMLDecodeError:
            continue  # e.g. a line of a multi-line array
        out.append((m.start(), m.end(), parsed))
    return out


def _is_target(parsed: Any) -> bool:
    node = parsed
    for part in SAMCONFIG_TABLE:
        if not isinstance(node, dict) or list(node) != [part]:
            return False
        node = node[part]
    return node == {}


def _quote(entry: str) -> str:
    return f'"{entry}"'


def _array_text(entries: list[str], newline: str) -> str:
    return "[" + newline + "".join(f"    {_quote(e)},{newline}" for e in entries) + "]"


def _edit_overrides(text: str, overrides: Mapping[str, str]) -> str:
    newline = "\r\n" if "\r\n" in text else "\n"
    headers = _headers(text)
    target = next((h for h in headers if _is_target(h[2])), None)
    if target is None:  # no [default.deploy.parameters] table: append one
        tail = "" if not text or text.endswith("\n") else newline
        block = (f"[{'.'.join(SAMCONFIG_TABLE)}]{newline}"
                 f"{OVERRIDES_KEY} = {_array_text(_updated_entries([], overrides), newline)}{newline}")
        return f"{text}{tail}{newline if text.strip() else ''}{block}"
    section_start = target[1]
    section_end = next((h[0] for h in headers if h[0] > target[0]), len(text))
    key = _KEY_LINE.search(text, section_start, section_end)
    if key is None:  # the table has no parameter_overrides: add it after the table's last key line
        lines = text[section_start:section_end].splitlines(keepends=True)
        offset, insert_at = section_start, section_start
        for line in lines:
            offset += len(line)
            if line.strip() and not line.lstrip().startswith("#"):
                insert_at = offset
        prefix = "" if text[:insert_at].endswith("\n") else newline
        line = f"{prefix}{OVERRIDES_KEY} = {_array_text(_updated_entries([], overrides), newline)}{newline}"
        return text[:insert_at] + line + text[insert_at:]

    value = _scan_value(text, key.end())
    if not value.is_array:  # a space-separated string: rewrite it as an array
        entries = _updated_entries(_split_entries(value.elements[0].value, OVERRIDES_KEY), overrides)
        return text[:value.start] + _array_text(entries, newline) + text[value.end:]

    edits: list[tuple[int, int, str]] = []
    seen = set()
    for token in value.elements:
        name = _entry_key(token.value)
        if name in overrides:
            edits.append((token.start, token.end, _quote(f"{name}={overrides[name]}")))
            seen.add(name)
    new = [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    if new:
        close = value.end - 1  # the closing bracket
        close_line = text.rfind("\n", 0, close) + 1
        multiline = "\n" in text[value.start:value.end]
        if value.elements:
            last = value.elements[-1]
            line_start = text.rfind("\n", 0, last.start) + 1
            indent = text[line_start:last.start] if not text[line_start:last.start].strip() else "    "
        else:
            indent = "    "
        if multiline and not text[close_line:close].strip():
            if value.elements and not value.trailing_comma:
                edits.append((value.elements[-1].end, value.elements[-1].end, ","))
            edits.append((close_line, close_line, "".join(f"{indent}{_quote(e)},{newline}" for e in new)))
        elif value.elements:
            last = value.elements[-1]
            edits.append((last.end, last.end, "".join(f", {_quote(e)}" for e in new)))
        else:
            edits.append((value.start + 1, value.start + 1, ", ".join(_quote(e) for e in new)))
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        text = text[:start] + replacement + text[end:]
    return text


def _without_overrides(doc: dict[str, Any]) -> dict[str, Any]:
    """The document less parameter_overrides, and less the tables that held nothing else."""
    table = _table(doc)
    if table is not None:
        table.pop(OVERRIDES_KEY, None)
        for depth in range(len(SAMCONFIG_TABLE), 0, -1):
            parent: Any = doc
            for part in SAMCONFIG_TABLE[:depth - 1]:
                parent = parent[part]
            if parent[SAMCONFIG_TABLE[depth - 1]] == {}:
                del parent[SAMCONFIG_TABLE[depth - 1]]
    return doc


def write_parameter_overrides(samconfig: Path, overrides: Mapping[str, str]) -> None:
    """Set KEY=VALUE entries of `[default.deploy.parameters] parameter_overrides` in samconfig.toml.

    Existing entries for those keys get the new value in place; new keys are appended; every other entry,
    comment and table stays byte for byte. The edited text is parsed again and checked (the rest of the
    document unchanged, the overrides exactly as intended) before it atomically replaces the file.
    """
    for key, value in overrides.items():
        if not _PARAMETER_NAME.match(key):
            raise ConfigurationError(f"{key!r} is not a CloudFormation parameter name (letters and digits)")
        if not _SAFE_VALUE.match(value):
            raise ConfigurationError(f"{key}: {value!r} is empty or holds whitespace, quotes or backslashes")
    samconfig = Path(samconfig)
    original = samconfig.read_bytes().decode("utf-8") if samconfig.exists() else "version = 0.1\n"
    before = _load_toml(original, samconfig)
    table = _table(before) or {}
    expected = _updated_entries(_split_entries(table.get(OVERRIDES_KEY, []), str(samconfig)), overrides)

    edited = _edit_overrides(original, overrides)
    after = _load_toml(edited, f"{samconfig} (edited)")
    got = _split_entries((_table(after) or {}).get(OVERRIDES_KEY, []), str(samconfig))
    if got != expected or _without_overrides(after) != _without_overrides(before):
        raise ConfigurationError(f"could not update {samconfig} safely; set these by hand in "
                                 f"[{'.'.join(SAMCONFIG_TABLE)}] {OVERRIDES_KEY}: "
                                 + " ".join(f"{k}={v}" for k, v in overrides.items()))
    partial = samconfig.with_name(f".{samconfig.name}.partial")
    partial.write_bytes(edited.encode("utf-8"))
    partial.replace(samconfig)


# -- after sam deploy --------------------------------------------------------------------------------
def stack_outputs(stack_name: str, region: str | None = None, client: Any = None) -> dict[str, str]:
    """OutputKey -> OutputValue of a deployed stack."""
    from botocore.exceptions import ClientError

    if client is None:
        import boto3

        client = boto3.client("cloudformation", region_name=region)
    try:
        stacks = client.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        raise ConfigurationError(f"cannot describe stack {stack_name} in {region or 'the default region'} "
                                 f"(deployed yet?): {exc}") from exc
    if not stacks:
        raise ConfigurationError(f"no stack {stack_name}")
    status = str(stacks[0].get("StackStatus", ""))
    # UPDATE_ROLLBACK_COMPLETE: the previous version stands and its outputs hold. ROLLBACK_COMPLETE: the first
    # create failed and nothing stands.
    if not status.endswith("_COMPLETE") or status in ("ROLLBACK_COMPLETE", "DELETE_COMPLETE"):
        raise ConfigurationError(f"stack {stack_name} is {status}, not deployed; run `sam deploy` (or `make deploy`)")
    return {str(o["OutputKey"]): str(o["OutputValue"]) for o in stacks[0].get("Outputs", [])}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def upload_if_changed(bucket: str, key: str, path: Path, region: str | None = None, client: Any = None) -> bool:
    """Put `path` at s3://bucket/key unless the object there has the same SHA-256; True when uploaded."""
    from botocore.exceptions import ClientError

    if client is None:
        import boto3

        client = boto3.client("s3", region_name=region)
    digest = sha256_file(path)
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        if head.get("Metadata", {}).get(SHA256_METADATA) == digest:
            return False
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code not in ("404", "NoSuchKey", "NotFound"):
            raise ConfigurationError(f"cannot read s3://{bucket}/{key}: {code or exc}") from exc
    client.put_object(Bucket=bucket, Key=key, Body=Path(path).read_bytes(), ContentType="application/gzip",
                      Metadata={SHA256_METADATA: digest})
    return True


# -- the `nacelle aws` commands ----------------------------------------------------------------------
def _deploy_region(samconfig: Path) -> str:
    if not samconfig.is_file():
        raise ConfigurationError(f"{samconfig}: no such file")
    uri = read_parameter_overrides(samconfig).get("TrainingImageUri")
    if not uri:
        raise ConfigurationError(f"{samconfig} has no TrainingImageUri yet: run `nacelle aws images --region "
                                 f"<region>` first")
    return image_region(uri)


def cmd_aws_images(args: argparse.Namespace) -> int:
    samconfig = Path(args.samconfig)
    current = read_parameter_overrides(samconfig) if samconfig.is_file() else {}
    instance_type = args.instance_type or current.get("TrainingInstanceType") or DEFAULT_INSTANCE_TYPE
    images = resolve_images(args.region, instance_type=instance_type)
    for key, value in images.items():
        print(f"{key}={value}")
    if args.dry_run:
        print(f"dry run: {samconfig} not changed")
        return 0
    write_parameter_overrides(samconfig, images)
    print(f"updated {OVERRIDES_KEY} in {samconfig}; `make deploy` deploys to {args.region}")
    return 0


def cmd_aws_package(args: argparse.Namespace) -> int:
    from nacelle.packaging import build_layer, build_sourcedir, sourcedir_members

    out = Path(args.out)
    archive = build_sourcedir(out)
    layer = build_layer(out)
    print(f"{archive}: {len(sourcedir_members())} files, sha256 {sha256_file(archive)}")
    print(f"{layer}: shared/ and requirements.txt for `sam build`")
    return 0


def cmd_aws_region(args: argparse.Namespace) -> int:
    print(_deploy_region(Path(args.samconfig)))
    return 0


def cmd_aws_upload_code(args: argparse.Namespace) -> int:
    samconfig = Path(args.samconfig)
    region = args.region or _deploy_region(samconfig)
    stack = args.stack_name or samconfig_stack_name(samconfig) or DEFAULT_STACK_NAME
    archive = Path(args.archive)
    if not archive.is_file():
        raise ConfigurationError(f"{archive}: no such file (run `nacelle aws package` first)")
    outputs = stack_outputs(stack, region)
    bucket = outputs.get(BUCKET_OUTPUT)
    if not bucket:
        raise ConfigurationError(f"stack {stack} has no {BUCKET_OUTPUT} output")
    uploaded = upload_if_changed(bucket, args.key, archive, region)
    print(f"{'uploaded' if uploaded else 'unchanged'}: s3://{bucket}/{args.key} (sha256 {sha256_file(archive)})")
    publish_detector(bucket, archive.parent, region)
    return 0


def publish_detector(bucket: str, build_root: Path, region: str, client: Any = None) -> list[str]:
    """Build the pinned nacelle.detector component and put its recipe and artifacts under
    components/nacelle.detector/<VERSION>/ (compilation_completed creates the component version from there).
    Unchanged objects are left alone; other bytes under the same VERSION are refused (bump VERSION)."""
    import boto3

    from nacelle.components import build, publish
    from shared.aws.s3 import S3ObjectStore

    built = build(build_root, bucket=bucket)
    store = S3ObjectStore(bucket, client or boto3.client("s3", region_name=region))
    written = publish(store, built.directory)
    print(f"nacelle.detector {built.version}: {len(written)} object(s) uploaded under "
          f"s3://{bucket}/components/nacelle.detector/{built.version}/")
    return written


def add_aws_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """`nacelle aws images|package|region|upload-code` (see docs/aws.md), the core-device commands
    (docs/devices.md) and the twin fleet."""
    aws = sub.add_parser("aws", parents=[common], help="deploy to AWS: image URIs, code packages, uploads, devices",
                         description="Helpers behind `make deploy` (docs/aws.md) and core devices "
                                     "(docs/devices.md).").add_subparsers(
        dest="aws_command", required=True, metavar="ACTION")
    samconfig_help = f"SAM config file (default {DEFAULT_SAMCONFIG})"

    images = aws.add_parser(
        "images", parents=[common], help="resolve the SageMaker training image and write it to samconfig.toml",
        description="Resolve the SageMaker PyTorch 2.5 (py311) training image for a region with the SageMaker "
                    f"SDK (offline; needs `{INSTALL_HINT}`) and set TrainingImageUri and ProcessingImageUri in "
                    "samconfig.toml's parameter_overrides, keeping its other entries and comments.")
    images.add_argument("--region", required=True, help="AWS region to deploy to, e.g. eu-west-1")
    images.add_argument("--samconfig", default=str(DEFAULT_SAMCONFIG), help=samconfig_help)
    images.add_argument("--instance-type", help="training instance type (default: samconfig's "
                                                f"TrainingInstanceType, else {DEFAULT_INSTANCE_TYPE})")
    images.add_argument("--dry-run", action="store_true", help="print the URIs, change nothing")
    images.set_defaults(func=cmd_aws_images)

    package = aws.add_parser(
        "package", parents=[common], help="build sourcedir.tar.gz and the layer folder",
        description="Write DIR/sourcedir.tar.gz (the training and compile code; reproducible byte for byte) "
                    "and DIR/layer/ (shared/ and requirements.txt, template.yaml's SharedLayer ContentUri).")
    package.add_argument("--out", default="build", help="output directory (default build)")
    package.set_defaults(func=cmd_aws_package)

    region = aws.add_parser(
        "region", parents=[common], help="print the region samconfig.toml's training image is for",
        description="Print the region of samconfig.toml's TrainingImageUri: the region `make deploy` uses.")
    region.add_argument("--samconfig", default=str(DEFAULT_SAMCONFIG), help=samconfig_help)
    region.set_defaults(func=cmd_aws_region)

    upload = aws.add_parser(
        "upload-code", parents=[common],
        help="upload sourcedir.tar.gz and the nacelle.detector component to the deployed stack's data bucket",
        description=f"Find the stack's {BUCKET_OUTPUT} output and put the archive at {SOURCE_KEY}, unless the "
                    "object there already has the same SHA-256. Uses your AWS credentials.")
    upload.add_argument("--archive", default=f"build/{Path(SOURCE_KEY).name}",
                        help="the archive (default build/sourcedir.tar.gz)")
    upload.add_argument("--region", help="default: the region of samconfig.toml's TrainingImageUri")
    upload.add_argument("--stack-name", help=f"default: samconfig.toml's stack_name, else {DEFAULT_STACK_NAME}")
    upload.add_argument("--samconfig", default=str(DEFAULT_SAMCONFIG), help=samconfig_help)
    upload.add_argument("--key", default=SOURCE_KEY, help=f"object key (default {SOURCE_KEY})")
    upload.set_defaults(func=cmd_aws_upload_code)

    from nacelle.aws_device_cli import add_device_commands
    from nacelle.aws_twin import add_twin_commands

    add_device_commands(aws, common)  # provision-device, provision-claim, devices, decommission-device
    add_twin_commands(aws, common)  # twin-up, twin-down
