"""How a site bills and where its budget is read: the ``accounting:`` section of a cluster profile.

Every value carries its source, as the rest of a profile does: a figure nobody can check on the site
is worse than none. ``hpcllm plan`` prices each grid point in node-hours and GPU-hours always, and in
the site's unit only where ``billing`` says how the site converts node-hours into it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from hpcllm.config.text import OneLine


class Billing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unit: OneLine = Field(description="The site's unit, as its budget command prints it (e.g. 'core-h').")
    per_node_hour: float = Field(gt=0, description="Units charged for one node-hour of this partition.")
    source: OneLine = Field(min_length=1, description="Where the site says so (URL or command).")


class BudgetCommand(BaseModel):
    model_config = ConfigDict(extra="forbid")

    argv: list[OneLine] = Field(min_length=1, description="The site's budget command, e.g. [saldo, -b].")
    source: OneLine = Field(min_length=1, description="Where the site documents it.")


class AccountingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    billing: Billing | None = Field(None, description="How node-hours become the site's unit; null = not stated.")
    budget_command: BudgetCommand | None = Field(
        None, description="Printed by `hpcllm plan` beside SLURM's own limits (sshare / sacctmgr)."
    )
    checkpoint_write_gib_s: float | None = Field(
        None, gt=0, description="Aggregate checkpoint write bandwidth of the results file system, GiB/s."
    )
    checkpoint_write_source: OneLine = Field("", description="Where checkpoint_write_gib_s was measured.")
