"""moto's server, with fixes for the moto gaps that stop a deploy of this app.

Run by `tools.local_aws.emulator` as `python -m tools.local_aws.patched_moto -H 127.0.0.1 -p PORT`. Each patch
names the moto behaviour it corrects; drop it once the pinned moto fixes it.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any


def _set_tags(backend, resource_id: str, tags: list | None) -> None:
    """An EC2 resource's tags made what its template says (an in-place update; AWS's own aws: tags stay)."""
    wanted = {t["Key"]: t["Value"] for t in tags or []}
    current = dict(backend.tags.get(resource_id, {}))
    stale = {key: value for key, value in current.items() if key not in wanted and not key.startswith("aws:")}
    if stale:
        backend.delete_tags([resource_id], stale)
    if wanted:
        backend.create_tags([resource_id], wanted)

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


def _removing_a_skipped_resource_deletes_nothing() -> None:
    """A resource of a type moto does not model (skipped at creation, as above) removed by an update: moto
    5.2.5 usually warns that it was never created, but one it had recorded as None (the backup plan's
    AWS::Backup::BackupSelection) raised AttributeError ('NoneType' has no delete_from_cloudformation_json)
    and failed UpdateStack. CloudFormation deletes the resource; the emulator never created it, so there is
    nothing to delete (the deploy report lists the type as skipped)."""
    from moto.cloudformation import parsing

    original = parsing.parse_and_delete_resource

    def parse_and_delete_resource(resource_name: Any, resource_json: dict, *args: Any, **kwargs: Any) -> None:
        if parsing.resource_class_from_type(resource_json.get("Type", "")) is None:
            return None
        return original(resource_name, resource_json, *args, **kwargs)

    # Module-level name: ResourceMap._delete_resource calls it through the module.
    parsing.parse_and_delete_resource = parse_and_delete_resource


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


def _wait_conditions_complete_unsignalled() -> None:
    """A stand-in, named: the single servers' in-place updates each get an AWS::CloudFormation::WaitCondition
    that CloudFormation holds the update on until the server signals its handle (cdk_constructs/bootstrap.py).
    moto 5.2.5 lists WaitCondition and WaitConditionHandle among its NULL_MODELS: it creates neither, so the
    stack goes on at once, as if the handle had been signalled SUCCESS, and the deploy report lists both types
    as skipped. No server runs on the emulator to signal it; the boot rehearsal, whose servers run cfn-init and
    cfn-hup for real, checks the signals. This patch changes nothing but says so, in the emulator's log."""
    from moto.cloudformation import parsing

    original = parsing.parse_and_create_resource

    def parse_and_create_resource(logical_id: str, resource_json: dict, *args: Any, **kwargs: Any):
        if resource_json.get("Type") == "AWS::CloudFormation::WaitCondition":
            print(f"emulator stand-in: wait condition {logical_id} completes without a signal, as if its handle "
                  "had been signalled SUCCESS (moto does not model wait conditions)", flush=True)
        return original(logical_id, resource_json, *args, **kwargs)

    parsing.parse_and_create_resource = parse_and_create_resource


def _termination_protection_is_updated() -> None:
    """UpdateTerminationProtection: the CDK CLI calls it after a deploy whose stack asks for a termination
    protection the deployed stack lacks (an environment whose operations.removal_policy keeps its data is
    protected, stacks/web_service.py). moto 5.2.5 raised NotImplementedError, so that deploy failed. Set the
    stack's EnableTerminationProtection (DescribeStacks reports it) and return its StackId, as CloudFormation
    does (https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_UpdateTerminationProtection.html).
    moto's DeleteStack still ignores the flag: no test deletes a protected stack."""
    from moto.cloudformation.responses import CloudFormationResponse
    from moto.core.responses import ActionResult

    def update_termination_protection(self) -> ActionResult:
        stack = self.cloudformation_backend.get_stack(self._get_param("StackName"))
        stack.enable_termination_protection = str(self._get_param("EnableTerminationProtection")).lower() == "true"
        return ActionResult({"StackId": stack.stack_id})

    CloudFormationResponse.update_termination_protection = update_termination_protection


# Properties whose change makes CloudFormation replace an AWS::EC2::Instance ("Update requires: Replacement"
# on https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-ec2-instance.html;
# the provider schema's createOnlyProperties say the same). Any other change (tags, UserData, InstanceType...)
# updates the instance in place, with or without a stop and start.
INSTANCE_REPLACED_BY = ("AvailabilityZone", "CpuOptions", "ElasticGpuSpecifications", "ElasticInferenceAccelerators",
                        "EnclaveOptions", "HibernationOptions", "HostResourceGroupArn", "ImageId", "Ipv6AddressCount",
                        "Ipv6Addresses", "KeyName", "LaunchTemplate", "LicenseSpecifications", "NetworkInterfaces",
                        "PlacementGroupName", "PrivateIpAddress", "SecurityGroups", "SubnetId")


def _instance_updates_as_cloudformation_does() -> None:
    """AWS::EC2::Instance on a stack update, as CloudFormation does it. moto 5.2.5 has no update for
    instances: the resource dropped out of the stack and the server kept its old tags. Now:
    - a change to a property in INSTANCE_REPLACED_BY (compared as resolved, so a launch template's new
      version counts, as it does on AWS) REPLACES the instance: a new one is launched, the Elastic IPs
      associated with the old one move to it (CloudFormation updates an AWS::EC2::EIP whose InstanceId
      refers to the replaced instance), and the old one is terminated;
    - any other change keeps the instance and applies the template's tags to it (the single server's
      `app-version` tag changes with every app deploy), as EC2 does without interruption."""
    import copy

    from moto.ec2.models import ec2_backends
    from moto.ec2.models.instances import Instance

    created = Instance.create_from_cloudformation_json.__func__

    def resolved(cloudformation_json: Any) -> dict:
        properties = cloudformation_json.get("Properties") or {}
        return copy.deepcopy({key: properties.get(key) for key in INSTANCE_REPLACED_BY})

    def create_from_cloudformation_json(cls, resource_name: str, cloudformation_json: Any, account_id: str,
                                        region_name: str, **kwargs: Any):
        instance = created(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
        instance.cfn_replaced_by = resolved(cloudformation_json)
        return instance

    def update_from_cloudformation_json(cls, original_resource: Any, new_resource_name: str,
                                        cloudformation_json: Any, account_id: str, region_name: str):
        backend = ec2_backends[account_id][region_name]
        before = getattr(original_resource, "cfn_replaced_by", None)
        if before is not None and before != resolved(cloudformation_json):
            replacement = create_from_cloudformation_json(cls, new_resource_name, cloudformation_json, account_id,
                                                          region_name)
            for address in list(backend.addresses):
                if address.instance is not None and address.instance.id == original_resource.id:
                    backend.associate_address(instance=replacement, address=address.public_ip, reassociate=True)
            backend.terminate_instances([original_resource.id])
            return replacement
        _set_tags(backend, original_resource.id, (cloudformation_json.get("Properties") or {}).get("Tags"))
        return original_resource

    Instance.create_from_cloudformation_json = classmethod(create_from_cloudformation_json)
    Instance.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)


def _auto_scaling_group_updates_in_place() -> None:
    """AWS::AutoScaling::AutoScalingGroup: CloudFormation replaces a group only when AutoScalingGroupName or
    InstanceId changes; a new launch template version, sizes, subnets, target groups and tags are updated in
    place ("Update requires: No interruption",
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-autoscaling-autoscalinggroup.html),
    and the group's UpdatePolicy then rolls its instances. moto 5.2.5 deleted and re-created the group on
    every update (a new name, so a new physical ID) where AWS keeps it. Update the group in place unless a
    replacing property changed."""
    from moto.autoscaling.models import FakeAutoScalingGroup, autoscaling_backends

    replaced = FakeAutoScalingGroup.update_from_cloudformation_json.__func__

    def update_from_cloudformation_json(cls, original_resource: Any, new_resource_name: str,
                                        cloudformation_json: Any, account_id: str, region_name: str):
        properties = cloudformation_json.get("Properties") or {}
        name = properties.get("AutoScalingGroupName")
        if (name and name != original_resource.name) or properties.get("InstanceId"):
            return replaced(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name)
        backend = autoscaling_backends[account_id][region_name]

        def number(key: str) -> int | None:
            return int(properties[key]) if properties.get(key) is not None else None

        group = backend.update_auto_scaling_group(
            name=original_resource.name, availability_zones=properties.get("AvailabilityZones", []),
            desired_capacity=number("DesiredCapacity"), max_size=number("MaxSize"), min_size=number("MinSize"),
            launch_config_name=properties.get("LaunchConfigurationName"),
            launch_template=properties.get("LaunchTemplate", {}),
            vpc_zone_identifier=",".join(properties.get("VPCZoneIdentifier", [])) or None,
            health_check_period=number("HealthCheckGracePeriod"),
            health_check_type=properties.get("HealthCheckType"),
            new_instances_protected_from_scale_in=properties.get("NewInstancesProtectedFromScaleIn"),
            mixed_instances_policy=properties.get("MixedInstancesPolicy") or None)
        wanted_groups = set(properties.get("TargetGroupARNs", []))
        current_groups = set(group.target_group_arns)
        if current_groups - wanted_groups:
            backend.detach_load_balancer_target_groups(group.name, sorted(current_groups - wanted_groups))
        if wanted_groups - current_groups:
            backend.attach_load_balancer_target_groups(group.name, sorted(wanted_groups - current_groups))
        tags = [{**tag, "ResourceId": group.name, "ResourceType": "auto-scaling-group"}
                for tag in properties.get("Tags", [])]
        stale = [{**t, "ResourceId": group.name} for t in group.tags if t["Key"] not in {tag["Key"] for tag in tags}]
        if stale:
            backend.delete_tags(stale)
        if tags:
            backend.create_or_update_tags(tags)
        return group

    FakeAutoScalingGroup.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)


def _vpc_endpoint_updates_in_place() -> None:
    """AWS::EC2::VPCEndpoint: CloudFormation updates an endpoint's route tables, subnets, security groups,
    policy and private DNS in place, and replaces it only when ServiceName, VpcEndpointType or VpcId changes
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-ec2-vpcendpoint.html).
    moto 5.2.5 has no update for endpoints: an updated endpoint (the S3 gateway endpoint gains the private
    subnets' route tables at stage 3) dropped out of the stack's resources. Modify it in place, or replace it
    when a replacing property changed."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.vpcs import VPCEndPoint

    def update_from_cloudformation_json(cls, original_resource: Any, new_resource_name: str,
                                        cloudformation_json: Any, account_id: str, region_name: str):
        properties = cloudformation_json.get("Properties") or {}
        endpoint_type = properties.get("VpcEndpointType") or "Gateway"
        if (properties.get("ServiceName"), properties.get("VpcId"), endpoint_type) != \
                (original_resource.service_name, original_resource.vpc_id, original_resource.vpc_endpoint_type):
            backend = ec2_backends[account_id][region_name]
            replacement = cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id,
                                                              region_name)
            backend.delete_vpc_endpoints([original_resource.id])
            return replacement

        def moved(key: str, current: list[str] | None) -> tuple[list[str], list[str]]:
            wanted, now = list(properties.get(key) or []), list(current or [])
            return [v for v in wanted if v not in now], [v for v in now if v not in wanted]

        add_rt, remove_rt = moved("RouteTableIds", original_resource.route_table_ids)
        add_subnets, remove_subnets = moved("SubnetIds", original_resource.subnet_ids)
        add_sgs, remove_sgs = moved("SecurityGroupIds", original_resource.security_group_ids)
        policy = properties.get("PolicyDocument")
        original_resource.modify(policy_doc=json.dumps(policy) if isinstance(policy, dict) else policy,
                                 add_subnets=add_subnets, remove_subnets=remove_subnets, add_route_tables=add_rt,
                                 remove_route_tables=remove_rt, add_security_groups=add_sgs,
                                 remove_security_groups=remove_sgs)
        if properties.get("PrivateDnsEnabled") is not None:
            original_resource.private_dns_enabled = properties["PrivateDnsEnabled"]
        return original_resource

    VPCEndPoint.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)


# Resource attributes that CloudFormation applies without updating the resource itself.
NOT_AN_UPDATE = ("DependsOn", "DeletionPolicy", "UpdateReplacePolicy")


def _policy_and_order_changes_update_nothing() -> None:
    """CloudFormation calls a resource's update only when its properties change: DeletionPolicy and
    UpdateReplacePolicy say what happens to it when it is deleted or replaced, DependsOn in what order it is
    handled (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-attribute-deletionpolicy.html,
    aws-attribute-updatereplacepolicy.html, aws-attribute-dependson.html), and a change to them alone leaves the
    resource and its physical ID as they are (an UpdateStack whose only changes are those does nothing:
    aws/aws-cdk#21496; tools/plan.py: "no change to the resource itself"). moto 5.2.5 compared each resource's
    whole template entry and called its type's update for any difference; a type without an update (EC2
    volumes, log groups, instance profiles) then dropped out of the stack, and an S3 bucket's update failed
    on its missing BucketName. Moving an environment to operations.removal_policy "snapshot" changes its data
    holders' policies, and [database.carry_from] makes the app servers wait for the database server. Leave a
    resource whose type and properties are unchanged out of moto's update; the stack keeps the new template."""
    from moto.cloudformation.parsing import ResourceMap

    original = ResourceMap.build_resource_diff

    def build_resource_diff(self, other_template: dict, parameters: dict | None = None) -> dict:
        diff = original(self, other_template, parameters)
        old, new = self._resource_json_map, other_template.get("Resources") or {}

        def rest(spec: dict) -> dict:
            return {key: value for key, value in spec.items() if key not in NOT_AN_UPDATE}

        diff["Modify"] = [name for name in diff["Modify"] if rest(old[name]) != rest(new[name])]
        return diff

    ResourceMap.build_resource_diff = build_resource_diff


def _log_group_updates_as_cloudformation_does() -> None:
    """AWS::Logs::LogGroup: CloudFormation replaces a log group when its LogGroupName changes and updates
    RetentionInDays and Tags in place ("Update requires: No interruption",
    https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-logs-loggroup.html).
    moto 5.2.5 has no update for log groups: an updated group (this app names a retained group after its
    stack, so operations.removal_policy "snapshot" renames them) dropped out of the stack. Replace it when
    the name changes (the old group is deleted: its UpdateReplacePolicy is not modelled), else update it."""
    from moto.logs.models import LogGroup, logs_backends

    def update_from_cloudformation_json(cls, original_resource: Any, new_resource_name: str,
                                        cloudformation_json: Any, account_id: str, region_name: str):
        properties = cloudformation_json.get("Properties") or {}
        backend = logs_backends[account_id][region_name]
        name = properties.get("LogGroupName")
        if name and name != original_resource.name:
            replacement = cls.create_from_cloudformation_json(name, cloudformation_json, account_id, region_name)
            backend.delete_log_group(original_resource.name)
            return replacement
        if properties.get("RetentionInDays") is not None:
            backend.put_retention_policy(original_resource.name, properties["RetentionInDays"])
        else:
            backend.delete_retention_policy(original_resource.name)
        wanted = {t["Key"]: t["Value"] for t in properties.get("Tags") or []}
        current = backend.list_tags_log_group(original_resource.name)
        stale = [key for key in current if key not in wanted]
        if stale:
            backend.untag_log_group(original_resource.name, stale)
        if wanted:
            backend.tag_log_group(original_resource.name, wanted)
        return original_resource

    LogGroup.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)


def _load_balancer_updates_in_place() -> None:
    """AWS::ElasticLoadBalancingV2::LoadBalancer: CloudFormation replaces a load balancer when its Name,
    Scheme or Type changes and updates its attributes, security groups, subnets and tags in place
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-elasticloadbalancingv2-loadbalancer.html).
    moto 5.2.5 has no update for load balancers: an updated one (operations.removal_policy "snapshot" turns
    on its deletion protection) dropped out of the stack, and the next Fn::GetAtt on it failed the update.
    Modify it in place, or replace it when a replacing property changed."""
    from moto.elbv2.models import FakeLoadBalancer, elbv2_backends

    def update_from_cloudformation_json(cls, original_resource: Any, new_resource_name: str,
                                        cloudformation_json: Any, account_id: str, region_name: str):
        properties = cloudformation_json.get("Properties") or {}
        backend = elbv2_backends[account_id][region_name]
        name = properties.get("Name")
        if (name and name != original_resource.name) or \
                properties.get("Scheme", "internet-facing") != original_resource.scheme or \
                properties.get("Type", "application") != original_resource.type:
            replacement = cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id,
                                                              region_name)
            backend.delete_load_balancer(original_resource.arn)
            return replacement
        arn = original_resource.arn
        attributes = {a["Key"]: str(a["Value"]).lower() if isinstance(a["Value"], bool) else str(a["Value"])
                      for a in properties.get("LoadBalancerAttributes") or []}
        if attributes:
            backend.modify_load_balancer_attributes(arn, attributes)
        if properties.get("SecurityGroups"):
            backend.set_security_groups(arn, list(properties["SecurityGroups"]))
        if properties.get("Subnets"):
            backend.set_subnets(arn, list(properties["Subnets"]), [])
        wanted = {t["Key"]: t["Value"] for t in properties.get("Tags") or []}
        stale = [key for key in original_resource.tags if key not in wanted]
        if stale:
            backend.remove_tags([arn], stale)
        if wanted:
            backend.add_tags([arn], [{"Key": k, "Value": v} for k, v in wanted.items()])
        return original_resource

    FakeLoadBalancer.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)


def _security_group_updates_in_place() -> None:
    """AWS::EC2::SecurityGroup: CloudFormation replaces a group when its GroupName, GroupDescription or VpcId
    changes and updates its rules and tags in place
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-ec2-securitygroup.html).
    moto 5.2.5 deleted and re-created the group on every update, a new physical ID where AWS keeps it (the
    database server's group loses its HTTPS egress when the server leaves). Keep the group and apply its
    tags unless a replacing property changed. moto models a group's inline rules at its creation only
    (its ingress; no egress at all): an update does not change them, and no test here reads them."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.security_groups import SecurityGroup

    replaced = SecurityGroup.update_from_cloudformation_json.__func__

    def update_from_cloudformation_json(cls, original_resource: Any, new_resource_name: str,
                                        cloudformation_json: Any, account_id: str, region_name: str):
        properties = cloudformation_json.get("Properties") or {}
        name = properties.get("GroupName")
        if (name and name != original_resource.name) or \
                properties.get("GroupDescription") != original_resource.description or \
                properties.get("VpcId") != original_resource.vpc_id:
            return replaced(cls, original_resource, new_resource_name, cloudformation_json, account_id, region_name)
        backend = ec2_backends[account_id][region_name]
        _set_tags(backend, original_resource.id, properties.get("Tags"))
        return original_resource

    SecurityGroup.update_from_cloudformation_json = classmethod(update_from_cloudformation_json)


def _volume_removal_follows_its_deletion_policy() -> None:
    """AWS::EC2::Volume removed from a stack (an update without it, or the stack's deletion): CloudFormation
    deletes it, after a final snapshot with DeletionPolicy "Snapshot", and keeps it with "Retain"
    (https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-attribute-deletionpolicy.html:
    this applies to updates that remove a resource too). moto 5.2.5 has no deletion for volumes: the volume
    left the stack's resources but stayed in EC2 (the EC2 database server's data volume, once its data was
    carried into RDS). Do what the policy says."""
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.elastic_block_store import Volume

    def delete_from_cloudformation_json(cls, resource_name: str, cloudformation_json: Any, account_id: str,
                                        region_name: str) -> None:
        policy = cloudformation_json.get("DeletionPolicy", "Delete")
        backend = ec2_backends[account_id][region_name]
        if policy == "Retain" or resource_name not in backend.volumes:
            return
        if policy == "Snapshot":
            backend.create_snapshot(resource_name, f"final snapshot of {resource_name} (DeletionPolicy Snapshot)")
        backend.delete_volume(resource_name)

    Volume.delete_from_cloudformation_json = classmethod(delete_from_cloudformation_json)


VERSION_ATTRIBUTES = ("LatestVersionNumber", "DefaultVersionNumber")


def _updates_follow_references() -> None:
    """CloudFormation updates a stack's resources in dependency order: a resource after every resource it
    refers to (Ref, Fn::GetAtt, Fn::Sub), so a property that reads another resource's attribute (an instance's
    LaunchTemplate version, a group's) sees the value the update gave it. moto 5.2.5 updated them in template
    order, so the single server read its launch template's version before that template's update made a new
    one. Order moto's modified resources by their references.

    CloudFormation also updates a resource whose template text is unchanged when a value it reads changes;
    moto 5.2.5 compared template text only. The one such value this app relies on: a launch template's
    LatestVersionNumber/DefaultVersionNumber, which every update of that template moves (moto's update
    makes a new version too), so a resource reading it is updated as well (an instance naming it is then
    replaced, above)."""
    from moto.cloudformation.parsing import ResourceMap

    original = ResourceMap.build_resource_diff

    def names(value: Any) -> set[str]:
        found: set[str] = set()
        if isinstance(value, dict):
            if isinstance(value.get("Ref"), str):
                found.add(value["Ref"])
            att = value.get("Fn::GetAtt")
            if isinstance(att, list) and att:
                found.add(str(att[0]))
            elif isinstance(att, str):
                found.add(att.split(".")[0])
            sub = value.get("Fn::Sub")
            text = sub[0] if isinstance(sub, list) and sub else sub
            if isinstance(text, str):
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)}
            for inner in value.values():
                found |= names(inner)
        elif isinstance(value, list):
            for inner in value:
                found |= names(inner)
        return found

    def versions(value: Any) -> set[str]:
        """The resources whose launch template version a value reads (Fn::GetAtt)."""
        if isinstance(value, dict):
            att = value.get("Fn::GetAtt")
            if isinstance(att, str):
                att = att.split(".", 1)
            found = {str(att[0])} if isinstance(att, list) and len(att) == 2 and att[1] in VERSION_ATTRIBUTES \
                else set()
            return found.union(*(versions(inner) for inner in value.values()))
        if isinstance(value, list):
            return set().union(*(versions(inner) for inner in value))
        return set()

    def build_resource_diff(self, other_template: dict, parameters: dict | None = None) -> dict:
        diff = original(self, other_template, parameters)
        resources = other_template.get("Resources") or {}
        templates = {name for name in diff["Modify"]
                     if resources.get(name, {}).get("Type") == "AWS::EC2::LaunchTemplate"}
        modified = diff["Modify"] + [name for name, spec in resources.items() if name not in diff["Modify"]
                                     and name in self._resource_json_map and versions(spec) & templates]
        ordered: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in ordered or name in path:
                return
            for dependency in sorted(names(resources.get(name, {}))):
                if dependency in modified:
                    visit(dependency, (*path, name))
            ordered.append(name)

        for name in modified:
            visit(name, ())
        diff["Modify"] = ordered
        return diff

    ResourceMap.build_resource_diff = build_resource_diff


def main(argv: list[str] | None = None) -> None:
    _kms_key_accepts_cloudformation_tags()
    _references_to_skipped_resources_resolve()
    _removing_a_skipped_resource_deletes_nothing()
    _missing_get_att_attributes()
    _image_id_resolves_ssm_parameters_at_launch()
    _describe_stack_resource_returns_metadata()
    _signal_resource_is_recorded()
    _wait_conditions_complete_unsignalled()
    _termination_protection_is_updated()
    _instance_updates_as_cloudformation_does()
    _auto_scaling_group_updates_in_place()
    _vpc_endpoint_updates_in_place()
    _log_group_updates_as_cloudformation_does()
    _load_balancer_updates_in_place()
    _security_group_updates_in_place()
    _volume_removal_follows_its_deletion_policy()
    _policy_and_order_changes_update_nothing()   # before _updates_follow_references, which orders what is left
    _updates_follow_references()
    from moto.server import main as moto_main

    moto_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
