"""What the infra tests share: the synth result, rendering CloudFormation values, the variant settings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT, REGION = "123456789012", "us-east-1"


@dataclass
class Synth:
    outdir: Path  #: the cloud assembly
    templates: dict[str, dict[str, Any]]  #: stack name -> template
    error: str | None = None  #: cdk-nag's report when the synth was refused

    def resources(self, stack: str, type_: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.templates[stack]["Resources"].items() if v["Type"] == type_}

    def one(self, stack: str, type_: str, **match: Any) -> dict[str, Any]:
        found = [v for v in self.resources(stack, type_).values() if all(v["Properties"].get(k) == m for k, m in match.items())]
        assert len(found) == 1, f"{len(found)} {type_} in {stack} matching {match}"
        return found[0]


def render(value: Any, template: dict[str, Any]) -> Any:
    """Resolve CloudFormation intrinsics with placeholder values (account 123456789012, us-east-1)."""
    pseudo = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::URLSuffix": "amazonaws.com"}

    def arn_of(logical: str) -> str:
        kind = template["Resources"][logical]["Type"]
        return {
            "AWS::Lambda::Function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{logical}",
            "AWS::StepFunctions::StateMachine": f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{logical}",
            "AWS::SQS::Queue": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{logical}",
            "AWS::S3::Bucket": f"arn:aws:s3:::{logical.lower()}",
        }.get(kind, f"arn:aws:placeholder:{REGION}:{ACCOUNT}:{logical}")

    def visit(node: Any) -> Any:
        if isinstance(node, list):
            return [visit(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "Ref" in node:
            ref = node["Ref"]
            if ref in pseudo:
                return pseudo[ref]
            kind = template["Resources"][ref]["Type"]
            return arn_of(ref) if kind == "AWS::StepFunctions::StateMachine" else ref.lower()
        if "Fn::GetAtt" in node:
            logical, attr = node["Fn::GetAtt"]
            return arn_of(logical) if attr == "Arn" else f"{logical.lower()}-{attr.lower()}"
        if "Fn::Join" in node:
            sep, parts = node["Fn::Join"]
            return sep.join(str(visit(p)) for p in parts)
        if "Fn::Split" in node:
            sep, s = node["Fn::Split"]
            return str(visit(s)).split(sep)
        if "Fn::Select" in node:
            i, seq = node["Fn::Select"]
            return visit(seq)[int(i)]
        return {k: visit(v) for k, v in node.items()}

    return visit(value)


def definition(template: dict[str, Any]) -> dict[str, Any]:
    """The state machine's definition as plain ASL JSON."""
    (sm,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::StepFunctions::StateMachine"]
    return json.loads(render(sm["Properties"]["DefinitionString"], template))



VARIANT = {
    "stack_name": "cubeless-alt",
    "bucket_name": "existing-cubes",
    "architecture": "x86_64",
    "lanes": 5,
    "max_lanes": 10,
    "tolerated_failure_percentage": 12.5,
    "alarm_topic_arn": f"arn:aws:sns:{REGION}:{ACCOUNT}:alerts",
    "tiles_public": True,
    "tiles_max_concurrency": 3,
    "schedules": [
        {"name": "weekly", "expression": "rate(7 days)", "enabled": True, "lanes": 2, "complete_bins_only": False,
         "spec": {"name": "wk", "bbox": [5.0, 45.0, 5.1, 45.1], "start": "2024-01-01", "end": "2024-12-31",
                  "interval": "week", "store": "s3://{bucket}/wk.zarr"}}
    ],
}  # fmt: skip
