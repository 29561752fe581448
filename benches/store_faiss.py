"""faiss HNSW on the vectors the Rust store benchmark wrote, for a same-machine ratio.

Run by `cargo bench --bench store` (needs `pip install faiss-cpu numpy`; not a CI dependency).
Reads raw little-endian f32 data/queries and u32 exact top-k ids, builds IndexHNSWFlat with
inner product (the vectors are unit length) and the same M / efConstruction, and prints
`build <seconds> <inserts/s>` and one `ef <ef> <recall@k> <queries/s>` line per efSearch,
searching one query at a time on one thread like the Rust side.

With `--serve` it takes its efSearch values from standard input instead, one `ef <ef>` line at a
time, answering each with its `ef` line as soon as that pass is done (until end of input): the
Rust bench then times faiss's pass at an ef right after its own.
"""
import argparse
import sys
import time

import faiss
import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--truth", required=True)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--efc", type=int, default=100)
    p.add_argument("--ef", default="16,32,64,128,256")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--serve", action="store_true", help="read `ef N` lines from stdin")
    a = p.parse_args()

    data = np.fromfile(a.data, dtype="<f4").reshape(-1, a.dim)
    queries = np.fromfile(a.queries, dtype="<f4").reshape(-1, a.dim)
    truth = np.fromfile(a.truth, dtype="<u4").reshape(-1, a.k)

    faiss.omp_set_num_threads(a.threads)
    index = faiss.IndexHNSWFlat(a.dim, a.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = a.efc
    t = time.perf_counter()
    index.add(data)
    build = time.perf_counter() - t
    print(f"build {build:.3f} {len(data) / build:.1f}", flush=True)

    faiss.omp_set_num_threads(1)

    def run(ef):
        index.hnsw.efSearch = ef
        t = time.perf_counter()
        got = [index.search(queries[i : i + 1], a.k)[1][0] for i in range(len(queries))]
        qps = len(queries) / (time.perf_counter() - t)
        hits = sum(len(set(g.tolist()) & set(tr.tolist())) for g, tr in zip(got, truth))
        print(f"ef {ef} {hits / truth.size:.4f} {qps:.1f}", flush=True)

    if a.serve:
        for line in sys.stdin:
            w = line.split()
            if len(w) == 2 and w[0] == "ef":
                run(int(w[1]))
        return
    for ef in [int(x) for x in a.ef.split(",")]:
        run(ef)


if __name__ == "__main__":
    main()
