"""A dashboard and alarms per environment, built with cdk-monitoring-constructs.

The library draws the widgets and wires every alarm to the SNS topic; what is ours is the
choice of signals and thresholds, which lives here in one place.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_sns as sns
from cdk_monitoring_constructs import (
    AlarmFactoryDefaults,
    CustomMetricGroup,
    CustomMetricWithAlarm,
    CustomThreshold,
    DefaultDashboardFactory,
    HighConnectionCountThreshold,
    MinUsageCountThreshold,
    MonitoringFacade,
    SnsAlarmActionStrategy,
    UsageThreshold,
)
from constructs import Construct

from cdk_constructs.observability import AGENT_NAMESPACE

PERIOD = Duration.minutes(1)
GT = cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD

# Thresholds: what pages someone. Rates are percent of requests over one minute.
ERROR_RATE_PERCENT = 1
P99_LATENCY_SECONDS = 1.5
CPU_PERCENT = 80
DISK_PERCENT = 80
DB_FREE_STORAGE_BYTES = 2 * 1024**3
DB_MAX_CONNECTIONS = 80


def _threshold(value: float, *, periods: int = 5, datapoints: int = 3) -> dict[str, CustomThreshold]:
    # 3 of the last 5 minutes: one noisy minute does not page, a sustained problem does.
    return {"Critical": CustomThreshold(threshold=value, comparison_operator=GT, evaluation_periods=periods,
                                        datapoints_to_alarm=datapoints,
                                        treat_missing_data_override=cloudwatch.TreatMissingData.NOT_BREACHING)}


def _metric(namespace: str, name: str, dimensions: dict, statistic: str = "Average") -> cloudwatch.Metric:
    return cloudwatch.Metric(namespace=namespace, metric_name=name, dimensions_map=dimensions,
                             statistic=statistic, period=PERIOD)


class ServiceMonitoring(Construct):
    """Dashboard `<stack>` and alarms to `topic`. Call the `watch_*` methods for what exists."""

    def __init__(self, scope: Construct, construct_id: str, *, name: str, topic: sns.ITopic) -> None:
        super().__init__(scope, construct_id)
        self.facade = MonitoringFacade(
            self, "Facade",
            alarm_factory_defaults=AlarmFactoryDefaults(
                alarm_name_prefix=name, actions_enabled=True,
                action=SnsAlarmActionStrategy(on_alarm_topic=topic, on_ok_topic=topic)),
            dashboard_factory=DefaultDashboardFactory(
                self, "Dashboards", dashboard_name_prefix=name, create_dashboard=True,
                create_summary_dashboard=False, create_alarm_dashboard=False),
        )

    def _group(self, title: str, metrics: list) -> None:
        self.facade.monitor_custom(alarm_friendly_name=title.title().replace(" ", ""), human_readable_name=title,
                                   metric_groups=[CustomMetricGroup(title=title, metrics=metrics)])

    def watch_load_balancer(self, load_balancer: elbv2.ApplicationLoadBalancer,
                            target_group: elbv2.ApplicationTargetGroup) -> None:
        requests = load_balancer.metrics.request_count(period=PERIOD, statistic="Sum")
        elb_5xx = load_balancer.metrics.http_code_elb(elbv2.HttpCodeElb.ELB_5XX_COUNT, period=PERIOD,
                                                      statistic="Sum")
        target_5xx = target_group.metrics.http_code_target(elbv2.HttpCodeTarget.TARGET_5XX_COUNT,
                                                           period=PERIOD, statistic="Sum")

        def rate(errors: cloudwatch.IMetric, errors_id: str, label: str) -> cloudwatch.MathExpression:
            # Each expression names its error metric differently: they share one graph.
            return cloudwatch.MathExpression(
                expression=f"IF(requests > 0, 100 * {errors_id} / requests, 0)",
                using_metrics={errors_id: errors, "requests": requests}, label=label, period=PERIOD)

        self._group("Load balancer", [
            CustomMetricWithAlarm(metric=rate(elb_5xx, "elb5xx", "ALB 5xx %"), alarm_friendly_name="Alb5xxRate",
                                  add_alarm=_threshold(ERROR_RATE_PERCENT)),
            CustomMetricWithAlarm(metric=rate(target_5xx, "target5xx", "Target 5xx %"), alarm_friendly_name="Target5xxRate",
                                  add_alarm=_threshold(ERROR_RATE_PERCENT)),
            CustomMetricWithAlarm(metric=target_group.metrics.unhealthy_host_count(period=PERIOD, statistic="Maximum"),
                                  alarm_friendly_name="UnhealthyHosts", add_alarm=_threshold(0, periods=3, datapoints=2)),
            CustomMetricWithAlarm(metric=target_group.metrics.target_response_time(period=PERIOD, statistic="p99"),
                                  alarm_friendly_name="P99Latency", add_alarm=_threshold(P99_LATENCY_SECONDS)),
            requests,
        ])

    def watch_servers(self, title: str, *, dimensions: dict, disk_paths: dict[str, str] | None = None,
                      instance_id: str | None = None) -> None:
        """CPU of servers (by instance or Auto Scaling group) and, per instance, disk use."""
        metrics = [CustomMetricWithAlarm(metric=_metric("AWS/EC2", "CPUUtilization", dimensions),
                                         alarm_friendly_name="Cpu",
                                         add_alarm=_threshold(CPU_PERCENT))]
        for label, path in (disk_paths or {}).items():
            metrics.append(CustomMetricWithAlarm(
                metric=_metric(AGENT_NAMESPACE, "disk_used_percent", {"InstanceId": instance_id, "path": path},
                               "Maximum"),
                alarm_friendly_name=f"Disk{label}", add_alarm=_threshold(DISK_PERCENT)))
        self._group(title, metrics)

    def watch_auto_scaling_group(self, group) -> None:
        self.facade.monitor_auto_scaling_group(auto_scaling_group=group, human_readable_name="App servers",
                                               alarm_friendly_name="AppServers")

    def watch_rds(self, instance) -> None:
        self.facade.monitor_rds_instance(
            instance=instance, human_readable_name="Database", alarm_friendly_name="Database",
            add_cpu_usage_alarm={"Critical": UsageThreshold(max_usage_percent=CPU_PERCENT)},
            add_free_storage_space_alarm={"Critical": MinUsageCountThreshold(min_count=DB_FREE_STORAGE_BYTES)},
            add_max_connection_count_alarm={"Critical": HighConnectionCountThreshold(
                max_connection_count=DB_MAX_CONNECTIONS)},
        )
