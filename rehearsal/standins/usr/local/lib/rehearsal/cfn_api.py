"""The CloudFormation API as the stand-ins of cfn-init, cfn-signal and cfn-hup call it: the Query
API over HTTPS to the endpoint (the emulator in the rehearsal), with the server's region.

The emulator checks no signature, so requests carry only the credential scope that names the
region; the real helper scripts sign with the instance role's credentials.
"""

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

CFN = Path("/var/lib/rehearsal-cfn")


class ApiError(Exception):
    pass


def call(action: str, region: str, attempts: int = 6, **params: str) -> ET.Element:
    endpoint = (CFN / "endpoint").read_text().strip()
    body = urllib.parse.urlencode({"Action": action, "Version": "2010-05-15", **params}).encode()
    scope = f"rehearsal/{time.strftime('%Y%m%d')}/{region}/cloudformation/aws4_request"
    request = urllib.request.Request(endpoint + "/", data=body, headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=0"})
    error: Exception | None = None
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return ET.fromstring(reply.read())
        except urllib.error.HTTPError as failure:  # an answer: no point retrying
            raise ApiError(f"{action}: HTTP {failure.code}: {failure.read()[:300]!r}") from failure
        except OSError as failure:  # no route, refused, timed out: what a closed security group gives
            error = failure
            time.sleep(min(2 ** attempt, 10))
    raise ApiError(f"{action}: cannot reach the CloudFormation endpoint {endpoint}: {error}")


def _text(root: ET.Element, name: str) -> str | None:
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == name:
            return element.text
    return None


def resource_metadata(stack: str, resource: str, region: str, attempts: int = 6) -> dict:
    root = call("DescribeStackResource", region, attempts, StackName=stack, LogicalResourceId=resource)
    return json.loads(_text(root, "Metadata") or "{}")


def signal(stack: str, resource: str, region: str, unique_id: str, status: str) -> None:
    call("SignalResource", region, StackName=stack, LogicalResourceId=resource, UniqueId=unique_id, Status=status)
