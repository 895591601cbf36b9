from serverlord.shardproc.process import main

main()
