from stepstone.cli import main

main()
