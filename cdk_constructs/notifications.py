"""An encrypted SNS topic that CloudWatch alarms and Auto Scaling can both publish to."""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from constructs import Construct


def encrypted_topic(scope: Construct, *, key_id: str, topic_id: str, display_name: str) -> sns.Topic:
    """A topic under `scope` with its own KMS key, built directly in `scope` (IDs `key_id`, `topic_id`).

    The AWS-managed SNS key cannot be used by CloudWatch or Auto Scaling, so the key is the topic's own."""
    key = kms.Key(scope, key_id, enable_key_rotation=True,
                  description="Encrypts the alarm and scaling notification topic")
    key.grant(iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*")
    # Auto Scaling publishes as its service-linked role, which may not exist yet in a new
    # account: name it in a condition, not as a principal (a missing principal fails the policy).
    key.add_to_resource_policy(iam.PolicyStatement(
        principals=[iam.AnyPrincipal()], actions=["kms:Decrypt", "kms:GenerateDataKey*"], resources=["*"],
        conditions={"ArnEquals": {"aws:PrincipalArn": Stack.of(scope).format_arn(
            service="iam", region="", resource="role",
            resource_name="aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling")}}))
    return sns.Topic(scope, topic_id, master_key=key, enforce_ssl=True, display_name=display_name)
