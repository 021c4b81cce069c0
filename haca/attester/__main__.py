from haca.attester.main import main

main()
