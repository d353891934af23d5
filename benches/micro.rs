//! Micro-benchmarks (not tests): hostlist expansion and compression. Prints figures; run
//! with `cargo bench --bench micro` (scripts/bench does, and writes bench/RESULTS.md). The
//! coordinator at scale is `benches/coordinator.rs`.

use mnd::hostlist;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn bench_hostlist() {
    let runs = 5;
    let mut expand_ms = Vec::new();
    let mut hosts = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        hosts = hostlist::expand("r[0-99]n[0000-9999]").unwrap();
        // Write as `mnd hostlist expand` does, to a sink.
        let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::sink());
        for h in &hosts {
            use std::io::Write;
            writeln!(out, "{h}").unwrap();
        }
        expand_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    assert_eq!(hosts.len(), 1_000_000);
    println!(
        "hostlist expand r[0-99]n[0000-9999] (1,000,000 hosts, written to a sink): median {:.1} ms",
        median(expand_ms)
    );
    let list: Vec<String> = (0..100_000)
        .map(|i| format!("gpu{:05}", i * 3 % 100_000))
        .collect();
    let mut ms = Vec::new();
    let mut sorted_ms = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(hostlist::compress(&list));
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        std::hint::black_box(hostlist::compress_sorted(&list));
        sorted_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "hostlist compress 100,000 hosts (list order): median {:.1} ms",
        median(ms)
    );
    println!(
        "hostlist compress 100,000 hosts (sorted):     median {:.1} ms",
        median(sorted_ms)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    bench_hostlist();
}
