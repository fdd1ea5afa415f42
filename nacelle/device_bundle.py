"""What a Greengrass core device is installed from (docs/devices.md): the nucleus `config.yaml`, the install
script with its checks, and files written so that a private key is never readable by anyone else.

Nothing is downloaded here. The Amazon root CA and the nucleus installer are fetched on the device by whoever
installs it; the install script checks both (and Java 17) and says exactly what to fetch when one is missing.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GREENGRASS_ROOT = "/greengrass/v2"
ROOT_CA = f"{GREENGRASS_ROOT}/AmazonRootCA1.pem"
ROOT_CA_URL = "https://www.amazontrust.com/repository/AmazonRootCA1.pem"
SYSTEM_ROOT_CA = "/etc/ssl/certs/Amazon_Root_CA_1.pem"  # Debian and Ubuntu's ca-certificates ship it here
# The nucleus the bundles are written for; install.sh refuses another installer (`--nucleus-version` to change).
NUCLEUS_VERSION = "2.16.1"
NUCLEUS_URL = "https://d2s8p88vqu9w66.cloudfront.net/releases/greengrass-{version}.zip"
FLEET_PLUGIN_URL = ("https://d2s8p88vqu9w66.cloudfront.net/releases/aws-greengrass-FleetProvisioningByClaim/"
                    "fleetprovisioningbyclaim-latest.jar")
FLEET_PLUGIN = "aws.greengrass.FleetProvisioningByClaim"
COMPONENT_USER = "ggc_user:ggc_group"
DEVICE_CERT = f"{GREENGRASS_ROOT}/device.pem.crt"
DEVICE_KEY = f"{GREENGRASS_ROOT}/private.pem.key"
CLAIM_DIR = f"{GREENGRASS_ROOT}/claim-certs"
CLAIM_CERT_FILE, CLAIM_KEY_FILE = "claim.pem.crt", "claim.private.pem.key"
JAVA_MIN = 17


@dataclass(frozen=True)
class Endpoints:
    """What every nucleus configuration of a stack shares."""

    region: str
    data: str  # iot:Data-ATS
    credentials: str  # iot:CredentialProvider
    role_alias: str


def nucleus_config(thing: str, endpoints: Endpoints, nucleus_version: str = NUCLEUS_VERSION) -> dict[str, Any]:
    """`--init-config` of a core device provisioned one at a time (certificate already on the device)."""
    return {
        "system": {"certificateFilePath": DEVICE_CERT, "privateKeyPath": DEVICE_KEY, "rootCaPath": ROOT_CA,
                   "rootpath": GREENGRASS_ROOT, "thingName": thing},
        "services": {"aws.greengrass.Nucleus": {
            "componentType": "NUCLEUS", "version": nucleus_version,
            "configuration": {"awsRegion": endpoints.region, "iotRoleAlias": endpoints.role_alias,
                              "iotDataEndpoint": endpoints.data, "iotCredEndpoint": endpoints.credentials}}},
    }


def fleet_provisioning_config(endpoints: Endpoints, template: str, thing: str, group: str, serial: str,
                              nucleus_version: str = NUCLEUS_VERSION) -> dict[str, Any]:
    """`--init-config` of a device provisioning itself with the claim certificate (the plugin's parameters)."""
    return {
        "services": {
            "aws.greengrass.Nucleus": {"version": nucleus_version},
            FLEET_PLUGIN: {"configuration": {
                "rootPath": GREENGRASS_ROOT, "awsRegion": endpoints.region,
                "iotDataEndpoint": endpoints.data, "iotCredentialEndpoint": endpoints.credentials,
                "iotRoleAlias": endpoints.role_alias, "provisioningTemplate": template,
                "claimCertificatePath": f"{CLAIM_DIR}/{CLAIM_CERT_FILE}",
                "claimCertificatePrivateKeyPath": f"{CLAIM_DIR}/{CLAIM_KEY_FILE}",
                "rootCaPath": ROOT_CA,
                "deviceId": f"provision-{thing}",  # the MQTT client id: the claim policy admits provision-* only
                "templateParameters": {"ThingName": thing, "ThingGroupName": group, "SerialNumber": serial},
            }},
        },
    }


def config_text(config: Mapping[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)


def install_command(config: str, installer: str = "$installer", trusted_plugin: str | None = None) -> str:
    """The nucleus installer's command line (run as root)."""
    jar = f"{installer}/lib/Greengrass.jar"
    plugin = f" --trusted-plugin {trusted_plugin}" if trusted_plugin else ""
    return (f'java -Droot="{GREENGRASS_ROOT}" -Dlog.store=FILE -jar "{jar}"{plugin} --init-config "{config}" '
            f"--component-default-user {COMPONENT_USER} --setup-system-service true")


# -- install.sh ---------------------------------------------------------------------------------------
_CHECKS = r"""fail() { echo "install.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (sudo): the nucleus installs a system service and its component user"
jar="$installer/lib/Greengrass.jar"
[ -f "$jar" ] || fail "$jar not found: download __NUCLEUS_URL__ and unzip it into $installer"
command -v java >/dev/null 2>&1 \
  || fail "no java: install Java __JAVA__ (Debian/Ubuntu: apt-get install -y openjdk-__JAVA__-jre-headless)"
java_version="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
[ "${java_version%%.*}" -ge __JAVA__ ] 2>/dev/null \
  || fail "Java ${java_version:-unknown} found; the nucleus needs Java __JAVA__ or later"
installer_version="$(java -jar "$jar" --version 2>/dev/null || true)"
case "$installer_version" in
  *"v__VERSION__") ;;
  *) fail "$jar is '${installer_version:-unreadable}', this bundle is for v__VERSION__ (--nucleus-version)" ;;
esac
python_version="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
[ "$python_version" = 3.11 ] || echo "install.sh: warning: python3 is '${python_version:-missing}'; the" \
  "detector's wheels need CPython 3.11 as python3 for the component user (docs/devices.md)" >&2
install -d -m 0755 __ROOT__
if [ ! -s __CA__ ] && [ -s __SYSTEM_CA__ ]; then install -m 0644 __SYSTEM_CA__ __CA__; fi
grep -q "BEGIN CERTIFICATE" __CA__ 2>/dev/null || fail "__CA__ is missing: fetch Amazon Root CA 1" \
  "(curl -fsS -o __CA__ __CA_URL__) or install ca-certificates (__SYSTEM_CA__)"
"""


def _checks(nucleus_version: str) -> str:
    values = {"__NUCLEUS_URL__": NUCLEUS_URL.format(version=nucleus_version), "__JAVA__": str(JAVA_MIN),
              "__VERSION__": nucleus_version, "__ROOT__": GREENGRASS_ROOT, "__CA__": ROOT_CA,
              "__SYSTEM_CA__": SYSTEM_ROOT_CA, "__CA_URL__": ROOT_CA_URL}
    text = _CHECKS
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def device_install_script(thing: str, certificate_id: str, nucleus_version: str = NUCLEUS_VERSION) -> str:
    """install.sh of a one-device bundle: `sudo ./install.sh <installer dir>` installs the nucleus as `thing`;
    `sudo ./install.sh --certificate-only` puts the bundle's (rotated) certificate in place and restarts it."""
    cert, key = f"certificates/{certificate_id}.pem.crt", f"certificates/{certificate_id}.private.pem.key"
    return f"""#!/usr/bin/env bash
# Greengrass core device {thing}: written by `nacelle aws provision-device` (docs/devices.md).
#   sudo ./install.sh <directory of the unzipped {NUCLEUS_URL.format(version=nucleus_version)}>
#   sudo ./install.sh --certificate-only    (after --rotate: the new certificate, then a restart)
set -euo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
if [ "${{1:-}}" = --certificate-only ]; then
  [ "$(id -u)" = 0 ] || {{ echo "install.sh: run as root (sudo)" >&2; exit 1; }}
  install -m 0644 "$here/{cert}" {DEVICE_CERT}
  install -m 0600 "$here/{key}" {DEVICE_KEY}
  systemctl restart greengrass
  echo "certificate {certificate_id[:12]}... installed; greengrass restarted"
  exit 0
fi
installer="${{1:?usage: sudo $0 <nucleus installer directory (holds lib/Greengrass.jar)> | --certificate-only}}"
{_checks(nucleus_version)}install -m 0644 "$here/{cert}" {DEVICE_CERT}
install -m 0600 "$here/{key}" {DEVICE_KEY}
set -x
{install_command('$here/config.yaml')}
"""


def claim_install_script(endpoints: Endpoints, template: str, name_pattern: str, serial_pattern: str,
                         groups: Mapping[str, str], nucleus_version: str = NUCLEUS_VERSION) -> str:
    """install.sh of a claim bundle: `sudo ./install.sh --thing T --group canary|fleet --serial S <installer dir>`
    checks the values as the hook will, writes the plugin's config.yaml and installs; `--print-config` only
    prints that config."""
    # the script admits only [A-Za-z0-9_-] in a thing name; a serial may hold YAML indicators (@ : #): quoted
    tokens = {"__THING__": "${thing}", "__GROUP__": "${group_name}", "__SERIAL__": '"${serial}"'}
    config = config_text(fleet_provisioning_config(endpoints, template, "__THING__", "__GROUP__", "__SERIAL__",
                                                   nucleus_version))
    for token, variable in tokens.items():
        config = config.replace(token, variable)
    cases = "\n".join(f"  {role}) group_name={shlex.quote(name)} ;;" for role, name in groups.items())
    roles = "|".join(groups)
    return f"""#!/usr/bin/env bash
# A core device provisioning itself by claim: written by `nacelle aws provision-claim` (docs/devices.md).
#   sudo ./install.sh --thing wt-07 --group {roles} --serial SN123 <directory of the unzipped nucleus installer>
#   ./install.sh --thing wt-07 --group {roles} --serial SN123 --print-config
set -euo pipefail
here="$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)"
usage() {{
  echo "usage: $0 --thing NAME --group {roles} --serial SERIAL (<installer dir> | --print-config)" >&2; exit 2
}}
thing="" group="" serial="" installer="" print_only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --thing) thing="${{2:-}}"; shift 2 ;;
    --group) group="${{2:-}}"; shift 2 ;;
    --serial) serial="${{2:-}}"; shift 2 ;;
    --print-config) print_only=1; shift ;;
    -*) usage ;;
    *) installer="$1"; shift ;;
  esac
done
[ -n "$thing" ] && [ -n "$group" ] && [ -n "$serial" ] || usage
# the same rules the stack's pre-provisioning hook applies (it refuses anything else)
[[ "$thing" =~ ^[A-Za-z0-9_-]+$ ]] && printf '%s' "$thing" | grep -Eq {shlex.quote(name_pattern)} \
  || {{ echo "install.sh: --thing '$thing' does not match {name_pattern}" >&2; exit 2; }}
[[ "$serial" =~ ^[A-Za-z0-9_.,@/:#-]+$ ]] && printf '%s' "$serial" | grep -Eq {shlex.quote(serial_pattern)} \
  || {{ echo "install.sh: --serial '$serial' does not match {serial_pattern}" >&2; exit 2; }}
case "$group" in
{cases}
  *) echo "install.sh: --group '$group' must be one of {roles}" >&2; exit 2 ;;
esac
render() {{
cat <<EOF
{config.rstrip()}
EOF
}}
if [ -n "$print_only" ]; then render; exit 0; fi
[ -n "$installer" ] || usage
{_checks(nucleus_version)}plugin="$installer/{FLEET_PLUGIN}.jar"
[ -f "$plugin" ] || fail "$plugin not found: download {FLEET_PLUGIN_URL} to it"
install -d -m 0700 {CLAIM_DIR}
install -m 0644 "$here/{CLAIM_CERT_FILE}" {CLAIM_DIR}/{CLAIM_CERT_FILE}
install -m 0600 "$here/{CLAIM_KEY_FILE}" {CLAIM_DIR}/{CLAIM_KEY_FILE}
config="$(mktemp)"
render > "$config"
set -x
{install_command('$config', trusted_plugin='"$plugin"')}
set +x
rm -f "$config"
# provisioned: the device has its own certificate, and the claim key has no more use here
if [ -s {GREENGRASS_ROOT}/thingCert.crt ]; then rm -f {CLAIM_DIR}/{CLAIM_KEY_FILE}; fi
"""


# -- files ---------------------------------------------------------------------------------------------
def write_private(path: Path, text: str) -> None:
    """Write a secret: created 0600 (never readable by others, not even for an instant), then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the temp file existed with other modes
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def write_public(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    tmp.replace(path)


def private_directory(path: Path) -> Path:
    """A bundle directory only its owner can enter (it holds private keys)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path
