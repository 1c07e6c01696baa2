use dbslots_core::{Pool, PoolOptions};
use std::time::{Duration, Instant};
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let pool = Pool::open(std::path::Path::new(&dir), &PoolOptions::new().capacity(2)).unwrap();
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        let s = pool.try_acquire().unwrap().unwrap();
        drop(s);
    }
    println!("try+release: {:?}/op", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n {
        let s = pool.acquire().unwrap();
        drop(s);
    }
    println!("acquire+release: {:?}/op", t.elapsed() / n);
    let a = pool.acquire().unwrap();
    let b = pool.acquire().unwrap();
    println!("held {} {}", a.index(), b.index());
    let t = Instant::now();
    let e = pool
        .acquire_timeout(Duration::from_millis(200))
        .unwrap_err();
    println!("timeout after {:?}: {e}", t.elapsed());
    println!(
        "{}",
        serde_json::to_string(&pool.stats().unwrap()).unwrap_or_default()
    );
    let p2 = pool.clone();
    let h = std::thread::spawn(move || {
        let t = Instant::now();
        let s = p2.acquire().unwrap();
        (t.elapsed(), s.index())
    });
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    drop(a);
    let (w, idx) = h.join().unwrap();
    println!(
        "thread waited {w:?}, got {idx}, handoff+join {:?}",
        t.elapsed()
    );
}
