"""moto's server, with fixes for the moto gaps that stop a deploy of this app.

Run by `tools.local_aws.emulator` as `python -m tools.local_aws.patched_moto -H 127.0.0.1 -p PORT`. Each patch
names the moto behaviour it corrects; drop it once the pinned moto fixes it.
"""

from __future__ import annotations

import sys
from typing import Any


def _kms_key_accepts_cloudformation_tags() -> None:
    """AWS::KMS::Key: CloudFormation tags are {Key, Value}, but moto's KMS tagger reads
    {TagKey, TagValue}, so a tagged key (every key, once the app tags its stacks) raised
    KeyError('TagKey') and failed CreateStack (moto 5.2.5)."""
    from moto.kms.models import Key

    original = Key.create_from_cloudformation_json.__func__

    def create_from_cloudformation_json(cls, resource_name: str, cloudformation_json: Any, account_id: str,
                                        region_name: str, **kwargs: Any):
        properties = cloudformation_json.get("Properties") or {}
        properties["Tags"] = [{"TagKey": t["Key"], "TagValue": t["Value"]} if "Key" in t else t
                              for t in properties.get("Tags") or []]
        return original(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)

    Key.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)


def _references_to_skipped_resources_resolve() -> None:
    """moto skips resource types it does not model (AWS::SecretsManager::Secret among them),
    and a `Ref`/`Fn::GetAtt` to a skipped resource then resolved to None: an IAM policy that
    grants access to the database secret became "Policy statement must contain resources"
    and failed CreateStack. Resolve such references to a placeholder ARN that names the
    skipped resource instead, so the rest of the stack deploys and the report still lists
    the type as skipped."""
    from moto.cloudformation import parsing

    original = parsing.clean_json

    def placeholder(resources_map: Any, logical_id: Any) -> str | None:
        if not isinstance(logical_id, str):
            return None
        # Conditions are cleaned against a plain dict, not a ResourceMap: nothing to resolve there.
        spec = getattr(resources_map, "_resource_json_map", {}).get(logical_id)
        if not spec or parsing.resource_class_from_type(spec.get("Type", "")) is not None:
            return None
        service = spec["Type"].split("::")[1].lower()
        return (f"arn:aws:{service}:{resources_map._region_name}:{resources_map._account_id}:"
                f"emulator-skipped-{logical_id}")

    def clean_json(resource_json: Any, resources_map: Any) -> Any:
        if isinstance(resource_json, dict) and len(resource_json) == 1:
            if "Ref" in resource_json:
                arn = placeholder(resources_map, resource_json["Ref"])
                if arn:
                    return arn
            if "Fn::GetAtt" in resource_json and isinstance(resource_json["Fn::GetAtt"], list):
                arn = placeholder(resources_map, resource_json["Fn::GetAtt"][0])
                if arn:
                    return arn
        return original(resource_json, resources_map)

    # Module-level name: clean_json recurses through it, so nested references are covered too.
    parsing.clean_json = clean_json


def _add_cfn_attributes(model: type, attributes: dict[str, Any]) -> None:
    """Teach a moto model `Fn::GetAtt` attributes that CloudFormation documents and it lacks."""
    from moto.cloudformation.exceptions import UnformattedGetAttTemplateException

    original_has = model.has_cfn_attr.__func__ if hasattr(model, "has_cfn_attr") else None
    original_get = getattr(model, "get_cfn_attribute", None)

    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in attributes or bool(original_has and original_has(cls, attr))

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        if attribute_name in attributes:
            return attributes[attribute_name](self)
        if original_get is None:
            raise UnformattedGetAttTemplateException()
        return original_get(self, attribute_name)

    model.has_cfn_attr = classmethod(has_cfn_attr)
    model.get_cfn_attribute = get_cfn_attribute


def _missing_get_att_attributes() -> None:
    """`Fn::GetAtt` attributes the app reads that moto 5.2.5 does not answer, each failing
    CreateStack: EIP PublicIp (the single-server `Url` output), the ALB's and target group's
    full names (CloudWatch alarm dimensions)."""
    from moto.ec2.models.elastic_ip_addresses import ElasticAddress
    from moto.elbv2.models import FakeLoadBalancer, FakeTargetGroup

    _add_cfn_attributes(ElasticAddress, {"PublicIp": lambda eip: eip.public_ip})
    # ARNs end in ":loadbalancer/app/NAME/ID" and ":targetgroup/NAME/ID"; the full name is that tail.
    _add_cfn_attributes(FakeLoadBalancer, {"LoadBalancerFullName": lambda lb: lb.arn.split(":loadbalancer/", 1)[1]})
    _add_cfn_attributes(FakeTargetGroup, {
        "TargetGroupFullName": lambda tg: tg.arn.rsplit(":", 1)[1],
        "TargetGroupName": lambda tg: tg.name,
        "TargetGroupArn": lambda tg: tg.arn,
        "LoadBalancerArns": lambda tg: list(tg.load_balancer_arns),
    })


def _image_id_resolves_ssm_parameters_at_launch() -> None:
    """EC2 launches an instance from the image its launch template names when the instance
    names none, and `resolve:ssm:NAME` as an ImageId (the launch templates of the servers that
    hold data name their image that way) launches the AMI that the parameter holds. moto 5.2.5
    did neither: AWS::EC2::Instance read Properties["ImageId"] (KeyError, CreateStack failed)
    and never looked at its LaunchTemplate, and RunInstances kept a `resolve:ssm:` string as
    the instance's ImageId. Take the image from the launch template version the instance
    names, and resolve `resolve:ssm:` through moto's own SSM backend (which carries the public
    /aws/service/ami-amazon-linux-latest parameters), as EC2 does."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import Instance, InstanceBackend
    from moto.ssm.models import ssm_backends

    original_run = InstanceBackend.run_instances

    def run_instances(self, image_id: str, *args: Any, **kwargs: Any):
        if not image_id and kwargs.get("launch_template"):
            image_id = self._get_template_from_args(kwargs["launch_template"]).image_id
        if isinstance(image_id, str) and image_id.startswith("resolve:ssm:"):
            name = image_id.removeprefix("resolve:ssm:")
            parameter = ssm_backends[self.account_id][self.region_name].get_parameter(name)
            if parameter is not None:
                image_id = parameter.value
        return original_run(self, image_id, *args, **kwargs)

    InstanceBackend.run_instances = run_instances

    original_create = Instance.create_from_cloudformation_json.__func__

    def create_from_cloudformation_json(cls, resource_name: str, cloudformation_json: Any, account_id: str,
                                        region_name: str, **kwargs: Any):
        properties = cloudformation_json.get("Properties") or {}
        spec = properties.get("LaunchTemplate")
        if not properties.get("ImageId") and spec:
            template = {k: spec[k] for k in ("LaunchTemplateId", "LaunchTemplateName", "Version") if spec.get(k)}
            image_id = ec2_backends[account_id][region_name]._get_template_from_args(template).image_id
            # run_instances (above) resolves a `resolve:ssm:` image, as EC2 does at launch.
            cloudformation_json = {**cloudformation_json, "Properties": {**properties, "ImageId": image_id}}
        return original_create(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)

    Instance.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)


def _describe_stack_resource_returns_metadata() -> None:
    """cfn-init and cfn-hup read a server's AWS::CloudFormation::Init through
    DescribeStackResource's Metadata. moto 5.2.5 returned no Metadata, and no detail at all for
    a resource type it does not model (Resource ... does not exist). Return the Metadata that
    the stack's template gives the resource (as written: moto resolves no intrinsics there), and
    a detail for any resource the template has."""
    import json
    from types import SimpleNamespace

    from moto.cloudformation.responses import CloudFormationResponse, StackResourceDTO
    from moto.core.responses import ActionResult

    def describe_stack_resource(self) -> ActionResult:
        stack_name = self._get_param("StackName")
        logical_id = self._get_param("LogicalResourceId")
        stack = self.cloudformation_backend.get_stack(stack_name)
        spec = (stack.template_dict.get("Resources") or {}).get(logical_id)
        modelled = next((r for r in stack.stack_resources
                         if getattr(r, "logical_resource_id", None) == logical_id), None)
        if spec is None and modelled is None:
            return self.cloudformation_backend.describe_stack_resource(stack_name, logical_id)  # the usual error
        detail = StackResourceDTO(stack, modelled or SimpleNamespace(
            logical_resource_id=logical_id, physical_resource_id=logical_id, cf_resource_type=spec["Type"]))
        detail.last_updated_timestamp = stack.creation_time
        if spec and "Metadata" in spec:
            detail.metadata = json.dumps(spec["Metadata"])
        return ActionResult({"StackResourceDetail": detail})

    CloudFormationResponse.describe_stack_resource = describe_stack_resource


def _signal_resource_is_recorded() -> None:
    """cfn-signal calls SignalResource, which moto 5.2.5 did not implement. Record it as
    CloudFormation does, as a resource event: "Received SUCCESS signal with UniqueId i-…"."""
    from moto.cloudformation.models import Event
    from moto.cloudformation.responses import CloudFormationResponse
    from moto.core.responses import ActionResult, EmptyResult

    def signal_resource(self) -> ActionResult:
        stack = self.cloudformation_backend.get_stack(self._get_param("StackName"))
        logical_id, status = self._get_param("LogicalResourceId"), self._get_param("Status")
        spec = (stack.template_dict.get("Resources") or {}).get(logical_id)
        if spec is None:
            return self.cloudformation_backend.describe_stack_resource(stack.name, logical_id)  # the usual error
        stack.events.append(Event(
            stack_id=stack.stack_id, stack_name=stack.name, logical_resource_id=logical_id,
            physical_resource_id=logical_id, resource_type=spec["Type"], resource_status="SIGNAL_RECEIVED",
            resource_status_reason=f"Received {status} signal with UniqueId {self._get_param('UniqueId')}",
            resource_properties=None))
        return EmptyResult()

    CloudFormationResponse.signal_resource = signal_resource


def _instance_tags_update_in_place() -> None:
    """AWS::EC2::Instance: CloudFormation updates an instance's tags without interruption (the
    single server's `app-version` tag changes with every app deploy). moto 5.2.5 has no update for
    instances, so a stack update left the old tags on the server. Apply the template's tags to the
    running instance and keep the instance, as EC2 does."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import Instance

    def update_from_cloudformation_json(cls, original_resource: Any, new_resource_name: str,
                                        cloudformation_json: Any, account_id: str, region_name: str):
        backend = ec2_backends[account_id][region_name]
        wanted = {t["Key"]: t["Value"] for t in (cloudformation_json.get("Properties") or {}).get("Tags") or []}
        current = dict(backend.tags.get(original_resource.id, {}))
        stale = {key: value for key, value in current.items() if key not in wanted and not key.startswith("aws:")}
        if stale:
            backend.delete_tags([original_resource.id], stale)
        if wanted:
            backend.create_tags([original_resource.id], wanted)
        return original_resource

    Instance.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)


def main(argv: list[str] | None = None) -> None:
    _kms_key_accepts_cloudformation_tags()
    _references_to_skipped_resources_resolve()
    _missing_get_att_attributes()
    _image_id_resolves_ssm_parameters_at_launch()
    _describe_stack_resource_returns_metadata()
    _signal_resource_is_recorded()
    _instance_tags_update_in_place()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
