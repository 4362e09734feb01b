//! `testpki DIR`: writes a test CA and certificates into DIR (ca.pem, server.pem for
//! 127.0.0.1 and localhost, server.key, client.pem, client.key, other-ca.pem), for the clients'
//! TLS tests (tools/test-clients.sh). Never for production: the keys sit unprotected on disk.

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: testpki DIR");
        std::process::exit(2);
    };
    let dir = std::path::PathBuf::from(dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("testpki: creating {}: {e}", dir.display());
        std::process::exit(1);
    }
    let pki = dispatch_testkit::test_pki(&dir);
    println!("{}", pki.ca.display());
}
