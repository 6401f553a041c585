#!/bin/sh
# Starts one Moleculer node from the built files (dist/) running the given node groups.
#   sh scripts/node.sh gateway platform      the named groups
#   NODE_GROUPS=gateway,org sh scripts/node.sh
#   sh scripts/node.sh                        every group (the embedded platform)
#   sh scripts/node.sh none --repl            no services: a REPL that joins the cluster
#   sh scripts/node.sh gateway ./my.service.js  a group plus a service file of your own
# Arguments starting with "-" go to moleculer-runner (--repl, --hot, ...); arguments with a "/"
# are service files or folders given to it as they are.
set -eu
cd "$(dirname "$0")/.."

groups=""
flags=""
files=""
for arg in "$@"; do
	case "$arg" in
		-*) flags="$flags $arg" ;;
		*/*) files="$files $arg" ;;
		*) groups="$groups $arg" ;;
	esac
done
[ -n "$groups" ] || groups=$(echo "${NODE_GROUPS:-}" | tr ',' ' ')

paths=""
for group in $groups; do
	[ "$group" = "none" ] && continue
	if [ ! -d "dist/services/$group" ]; then
		echo "Unknown node group '$group'. Groups: $(ls dist/services | tr '\n' ' ')" >&2
		exit 2
	fi
	paths="$paths dist/services/$group"
done
case " $groups " in
	*" none "*) ;;
	*) [ -n "$paths$files" ] || paths="dist/services" ;;
esac

# shellcheck disable=SC2086 # word splitting of the lists is intended
exec node node_modules/moleculer/bin/moleculer-runner.js --config dist/moleculer.config.js $flags $paths $files
