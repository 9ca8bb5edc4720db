//! scratch
use h2o_kv::*;
#[test]
fn scratch() {
    let mut c = H2OSinksCache::<f64>::new(1, 1, 0, 1).unwrap();
    let eia = StepOrder::EvictInsertAttend;
    for i in 0..4 {
        let r = c.step_with(eia, &[1.0], &[i as f64], &[1.0]).map(|x| x.to_vec());
        eprintln!("{i}: {r:?} {:?} {:?}", c.resident_positions(), c.last_evicted());
    }
}
