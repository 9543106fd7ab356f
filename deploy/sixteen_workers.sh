#!/usr/bin/env bash
# 16 workers on one PostgreSQL study: 4 processes x --workers 4, tiny trials; then check the budget.
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1  # 20 processes on a small machine: one thread each
name=sixteen-$(date +%s)
url=${1:-postgresql://postgres@127.0.0.1:5432/test}
homes=$(mktemp -d)
for i in 1 2 3 4; do
  MNIST_SEARCH_HOME=$homes/m$i python -m search.run --storage $url --study-name $name --trials 40 --workers 4 \
    --train-size 1000 --val-size 300 --max-epochs 2 --target-accuracy none --no-export > "$homes/m$i.log" 2>&1 &
done
wait
python - "$url" "$name" <<'PY'
import sys, optuna
from optuna.trial import TrialState
s = optuna.load_study(study_name=sys.argv[2], storage=sys.argv[1])
t = s.get_trials(deepcopy=False)
fin = [x for x in t if x.state in (TrialState.COMPLETE, TrialState.PRUNED)]
print("study", sys.argv[2], "trials", len(t), "finished", len(fin), "running/waiting", sum(x.state in (TrialState.RUNNING, TrialState.WAITING) for x in t),
      "failed", [(x.number, x.user_attrs.get("surplus")) for x in t if x.state == TrialState.FAIL], "trial0", t[0].params.get("classifier"))
PY
grep -h "error" "$homes"/m*.log | head
