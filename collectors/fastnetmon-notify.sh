#!/bin/sh
# FastNetMon's notify_script_path takes one path and no arguments of its own: this wrapper
# hands FastNetMon's "<IP> <direction> <pps> <action>" (and the report on stdin) to flowguard.
exec flowguard hook fastnetmon --config /etc/flowguard/flowguard.toml "$@"
