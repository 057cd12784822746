from dnsvr.cli import main

main()
