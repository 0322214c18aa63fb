//! Library side of the `spooky` package: a small HTTP/3 client shared by the load tool
//! (`spooky-bench`) and the end-to-end tests. The proxy itself lives in `spooky-stages`.

pub mod h3client;
