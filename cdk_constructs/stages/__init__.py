"""The four architecture stages, each a construct usable on its own."""

from cdk_constructs.stages.load_balanced import LoadBalanced
from cdk_constructs.stages.multi_process import MultiProcess
from cdk_constructs.stages.separate_database import SeparateDatabase
from cdk_constructs.stages.single_server import SingleServer

STAGES = {1: SingleServer, 2: SeparateDatabase, 3: LoadBalanced, 4: MultiProcess}

__all__ = ["STAGES", "LoadBalanced", "MultiProcess", "SeparateDatabase", "SingleServer"]
