"""Site checks on a live cluster: doctor and the facts it reads (sinfo, scontrol, sacctmgr)."""
