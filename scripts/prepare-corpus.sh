#!/usr/bin/env bash
# Tokenizer + token shards for the default corpus: the King James Bible (Authorized Version) from
# Debian's bible-kjv package, which scripts/setup.sh extracts to data/corpus/kjv.txt.
#
# Licence: the KJV text is in the public domain in most of the world; in the United Kingdom the
# Authorized Version is under Crown copyright (letters patent). Neither the text nor the shards are
# committed: data/ is ignored by git and rebuilt here.
#
#   scripts/prepare-corpus.sh              # vocab 4096 into data/kjv/
#   VOCAB=1024 OUT=data/kjv1k scripts/prepare-corpus.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS=data/corpus/kjv.txt
VOCAB="${VOCAB:-4096}"
OUT="${OUT:-data/kjv}"

if [[ ! -s "$CORPUS" ]]; then
  echo "prepare-corpus: $CORPUS is missing; running scripts/setup.sh"
  scripts/setup.sh
fi

dotnet build Palm.Trainer -c Release -v quiet -nologo
trainer=(dotnet run --project Palm.Trainer -c Release --no-build --)
mkdir -p "$OUT"
"${trainer[@]}" tokenizer "$CORPUS" --vocab "$VOCAB" --out "$OUT/tokenizer.json"
"${trainer[@]}" prepare "$CORPUS" --tokenizer "$OUT/tokenizer.json" --out "$OUT" --val-fraction 0.1
echo "prepare-corpus: done; train with: dotnet run --project Palm.Trainer -c Release -- train --data $OUT --out runs/kjv"
