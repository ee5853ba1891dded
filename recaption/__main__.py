from recaption.cli import main

main()
