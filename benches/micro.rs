//! Micro-benchmarks (not tests): hostlist expansion/compression and the coordinator's
//! readiness wait against many simulated workers. Prints figures; run with
//! `cargo bench --bench micro` (scripts/bench does, and writes bench/RESULTS.md).

use mnd::{hostlist, probe};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

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

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Loopback address of simulated worker i (127.1.x.y: one address per worker, same port).
fn addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        1 + (i / 65536) as u8,
        ((i / 256) % 256) as u8,
        (i % 256) as u8 + 1,
    )
}

async fn listen(i: usize, port: u16) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::TcpListener::bind(SocketAddrV4::new(addr(i), port))
        .await
        .expect("bind loopback");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2 sim\r\n").await;
        }
    })
}

/// All workers come up over `spread`, a share of them late; prints the time from the last
/// listener to "all ready".
async fn readiness(n: usize, port: u16) {
    let hosts: Vec<String> = (0..n).map(|i| addr(i).to_string()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let probe = tokio::spawn({
        let hosts = hosts.clone();
        async move { probe::wait_all(&hosts, port, deadline).await }
    });
    let mut servers = Vec::new();
    // 90% listen at once, 10% arrive over the next 500 ms.
    let early = n * 9 / 10;
    for i in 0..early {
        servers.push(listen(i, port).await);
    }
    for (k, i) in (early..n).enumerate() {
        if k % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        servers.push(listen(i, port).await);
    }
    let last = Instant::now();
    probe.await.unwrap().expect("all ready");
    println!("readiness, {n} simulated workers (10% late): all ready {:.0} ms after the last one started listening", last.elapsed().as_secs_f64() * 1e3);
    for s in servers {
        s.abort();
    }
}

/// Some workers never come: the report must arrive at the deadline, naming them.
async fn dead_workers(n: usize, dead: usize, port: u16) {
    let hosts: Vec<String> = (0..n).map(|i| addr(i).to_string()).collect();
    let mut servers = Vec::new();
    for i in dead..n {
        servers.push(listen(i, port).await);
    }
    let wait = Duration::from_secs(3);
    let t = Instant::now();
    let r = probe::wait_all(&hosts, port, tokio::time::Instant::now() + wait).await;
    let e = r.expect_err("dead workers must be reported");
    assert_eq!(e.missing.len(), dead);
    println!(
        "readiness, {n} workers with {dead} dead, deadline {:.0} s: failure reported after {:.2} s: \"{}\"",
        wait.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        e
    );
    for s in servers {
        s.abort();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    raise_nofile();
    bench_hostlist();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        readiness(1_000, 47001).await;
        readiness(10_000, 47002).await;
        dead_workers(1_000, 3, 47003).await;
    });
}
