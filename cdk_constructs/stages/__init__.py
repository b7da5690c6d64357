"""The four architecture stages, each a construct usable on its own, with typed props.

`from cdk_constructs.stages import MultiProcess, ServerProps, DatabaseProps` is all a CDK app
of your own needs (examples/own_vpc/app.py).
"""

from cdk_constructs.props import DatabaseProps, Domain, LoadBalancerProps, ServerProps, Subnets
from cdk_constructs.stages.load_balanced import LoadBalanced
from cdk_constructs.stages.multi_process import MultiProcess
from cdk_constructs.stages.separate_database import SeparateDatabase
from cdk_constructs.stages.single_server import SingleServer

STAGES = {1: SingleServer, 2: SeparateDatabase, 3: LoadBalanced, 4: MultiProcess}

__all__ = ["STAGES", "DatabaseProps", "Domain", "LoadBalanced", "LoadBalancerProps", "MultiProcess",
           "SeparateDatabase", "ServerProps", "SingleServer", "Subnets"]
