#!/usr/bin/env bash
# The quickstart as a VM runs it: shaping forced to netem, and, under software CPU emulation
# (TCG), the shards' compute modelled instead of run (numpy is tens of times slower there:
# the first token of a 37-token prompt took over 10 s, against 0.4 s on the host, past the
# client's deadlines). The mesh, netem, the gRPC shards and the client stay real.
#
#   bash tools/quickstart-variant.sh OUT_DIR [tcg|kvm]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1
accel=${2:-kvm}
spec=$(mktemp --suffix=.yaml)
sed 's/backend: auto/backend: netem/' experiments/quickstart.yaml > "$spec"
grep -q 'backend: netem' "$spec" || { echo "meshemu: the quickstart has no 'backend: auto' to switch" >&2; exit 1; }
if [ "$accel" = tcg ]; then
  sed -i 's/^model: .*/model: {source: preset:smollm2-135m, compute: "device:orin"}/' "$spec"
  echo "meshemu: TCG: the quickstart's compute is modelled (device:orin); its network path, netem and shards are real" >&2
fi
exec meshemu run "$spec" --out "$out"
