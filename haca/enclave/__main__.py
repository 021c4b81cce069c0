from haca.enclave.main import main

main()
