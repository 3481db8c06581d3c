#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_fuzz::targets::trusted_proxies::run(data));
